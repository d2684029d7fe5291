package main

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	tomlu "github.com/pelletier/go-toml/v2/unstable"
	"github.com/spf13/pflag"
)

// defaultConfig is read when --config is not given, if it exists.
const defaultConfig = "/etc/ocifs/config.toml"

// maxConfigBytes caps the configuration file.
const maxConfigBytes = 1 << 20

// The configuration file holds flag settings: a key at the top is a global
// flag, a key in [mount] (or [cache.prune], [index.build]...) is a flag of
// that command, spelled as on the command line without the dashes:
//
//	cache-dir = "/var/cache/ocifs"
//	hosts-dir = "/etc/containerd/certs.d"
//
//	[mount]
//	cache-max = "20G"
//	metrics-address = "127.0.0.1:9464"
//	allow-other = true
//
// A flag that may be repeated (index-repo) takes one string or an array of
// them: index-repo = ["registry.example/indexes", "mirror.example/indexes"].
// The command line wins over the file. The whole file is checked before any
// command runs: a key no command has, a table that is no command, a value
// a flag refuses, is an error naming the file, the line and the key.

// configSetting is one key = value of the file.
type configSetting struct {
	table []string // [] for the top level, ["cache", "prune"]
	key   string
	value string // as a flag's Set takes it
	array bool   // value is a TOML array, joined with commas (a slice flag's Set splits it)
	line  int
}

func (s configSetting) name() string {
	return strings.Join(append(slices.Clone(s.table), s.key), ".")
}

// configError is a mistake in the configuration file.
func configError(file string, line int, format string, args ...any) error {
	where := file
	if line > 0 {
		where = fmt.Sprintf("%s:%d", file, line)
	}
	return withHint(fmt.Errorf("config %s: %s", where, fmt.Sprintf(format, args...)),
		"keys are the flags' names without dashes, at the top for global flags and under [COMMAND] for a command's; 'ocifs COMMAND --help' lists them")
}

// parseConfig reads the settings of a configuration file.
func parseConfig(file string, b []byte) ([]configSetting, error) {
	var p tomlu.Parser
	p.Reset(b)
	var out []configSetting
	var table []string
	seen := map[string]int{}
	keyOf := func(n *tomlu.Node) []string {
		var parts []string
		for it := n.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
		}
		return parts
	}
	for p.NextExpression() {
		e := p.Expression()
		line := p.Shape(e.Raw).Start.Line
		switch e.Kind {
		case tomlu.Table:
			table = keyOf(e)
		case tomlu.ArrayTable:
			return nil, configError(file, line, "[[%s]]: an array of tables; ocifs takes [COMMAND] tables", strings.Join(keyOf(e), "."))
		case tomlu.KeyValue:
			k := keyOf(e)
			if len(k) == 0 {
				continue
			}
			s := configSetting{table: append(slices.Clone(table), k[:len(k)-1]...), key: k[len(k)-1], line: line}
			v := e.Value()
			if v.Raw.Length > 0 {
				s.line = p.Shape(v.Raw).Start.Line
			}
			val, err := configValue(v)
			if v.Kind == tomlu.Array && err == nil {
				val, err = configArray(v)
				s.array = true
			}
			if err != nil {
				return nil, configError(file, s.line, "key %s: %v", s.name(), err)
			}
			s.value = val
			if prev, ok := seen[s.name()]; ok {
				return nil, configError(file, s.line, "key %s: set again (first on line %d)", s.name(), prev)
			}
			seen[s.name()] = s.line
			out = append(out, s)
		}
	}
	if err := p.Error(); err != nil {
		var pe *tomlu.ParserError
		if errors.As(err, &pe) {
			return nil, configError(file, p.Shape(p.Range(pe.Highlight)).Start.Line, "%s", pe.Message)
		}
		return nil, configError(file, 0, "%v", err)
	}
	return out, nil
}

// configValue renders a TOML value as a flag's Set takes it.
func configValue(v *tomlu.Node) (string, error) {
	switch v.Kind {
	case tomlu.String:
		return string(v.Data), nil
	case tomlu.Bool:
		return string(v.Data), nil
	case tomlu.Integer:
		s := strings.ReplaceAll(string(v.Data), "_", "")
		n, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			return "", fmt.Errorf("integer %s: %v", v.Data, err)
		}
		return strconv.FormatInt(n, 10), nil
	case tomlu.Float:
		return strings.ReplaceAll(string(v.Data), "_", ""), nil
	case tomlu.Array:
		return "", nil // configArray reads it, for the flags that repeat
	}
	return "", fmt.Errorf("a %s; want a string, number or boolean", v.Kind)
}

// configArray renders an array of strings as a slice flag's Set takes it:
// joined with commas. A string with a comma, a quote or a line break could
// not be told apart there, so it is refused.
func configArray(v *tomlu.Node) (string, error) {
	var parts []string
	for it := v.Children(); it.Next(); {
		n := it.Node()
		if n.Kind != tomlu.String {
			return "", fmt.Errorf("an array holding a %s; want an array of strings", n.Kind)
		}
		s := string(n.Data)
		if s == "" || strings.ContainsAny(s, ",\"\r\n") {
			return "", fmt.Errorf("array element %q: empty, or has a comma, quote or line break", s)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "", errors.New("an empty array; leave the key out instead")
	}
	return strings.Join(parts, ","), nil
}

// repeatable reports whether flag f takes several values (an array in the
// file).
func repeatable(f *pflag.Flag) bool {
	return strings.HasSuffix(f.Value.Type(), "Slice")
}

// readConfig reads and parses file. A missing default file is no error.
func readConfig(file string, explicit bool) ([]configSetting, error) {
	f, err := os.Open(file)
	if errors.Is(err, iofs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, withHint(fmt.Errorf("config: %w", err), "--config names the configuration file (default "+defaultConfig+")")
	}
	defer f.Close()
	b := make([]byte, maxConfigBytes+1)
	n, err := f.Read(b)
	for err == nil && n < len(b) {
		var m int
		m, err = f.Read(b[n:])
		n += m
	}
	if n > maxConfigBytes {
		return nil, configError(file, 0, "larger than %d bytes", maxConfigBytes)
	}
	return parseConfig(file, b[:n])
}

// configurable reports whether flag f may be set from the file.
func configurable(f *pflag.Flag) bool {
	return f != nil && !f.Hidden && f.Name != "help" && f.Name != "config"
}

// commandFlags returns the flag set of every command, by its table path.
func commandFlags() map[string]*pflag.FlagSet {
	out := map[string]*pflag.FlagSet{}
	add := func(c *command) {
		if c.flags == nil {
			return
		}
		set := newFlagSet("ocifs " + c.name)
		c.flags(set)
		out[strings.ReplaceAll(c.name, " ", ".")] = set
	}
	for _, g := range commands {
		add(g.cmd)
		for _, s := range g.subs {
			add(s)
		}
	}
	return out
}

// applyConfig checks every setting of file against the global flags and
// each command's, then sets those of the globals and of cmd (whose flags,
// globals included, are in set) that the command line left alone.
func applyConfig(file string, settings []configSetting, cmd *command, set *pflag.FlagSet) error {
	globalSet := newFlagSet("ocifs")
	(&globals{}).register(globalSet)
	cmds := commandFlags()
	table := strings.ReplaceAll(cmd.name, " ", ".")
	for _, s := range settings {
		t := strings.Join(s.table, ".")
		check := globalSet
		if t != "" {
			var ok bool
			if check, ok = cmds[t]; !ok {
				return configError(file, s.line, "key %s: no command %q has flags (tables: %s)", s.name(), strings.Join(s.table, " "), strings.Join(tableNames(cmds), ", "))
			}
		}
		f := check.Lookup(s.key)
		if t != "" && f == nil && configurable(globalSet.Lookup(s.key)) {
			return configError(file, s.line, "key %s: %s is a global flag: set it at the top of the file", s.name(), s.key)
		}
		if !configurable(f) {
			return configError(file, s.line, "unknown key %s (%s)", s.name(), knownKeys(check, t))
		}
		if s.array && !repeatable(f) {
			return configError(file, s.line, "key %s: an array; want a string, number or boolean (%s takes one value)", s.name(), s.key)
		}
		// Check the value on a scratch flag set, whichever command it is for.
		if err := f.Value.Set(s.value); err != nil {
			return configError(file, s.line, "key %s: %v", s.name(), err)
		}
		if t != "" && t != table {
			continue
		}
		if live := set.Lookup(s.key); live != nil && !live.Changed {
			if err := live.Value.Set(s.value); err != nil {
				return configError(file, s.line, "key %s: %v", s.name(), err)
			}
		}
	}
	return nil
}

func tableNames(cmds map[string]*pflag.FlagSet) []string {
	var names []string
	for n, set := range cmds {
		has := false
		set.VisitAll(func(f *pflag.Flag) { has = has || configurable(f) })
		if has {
			names = append(names, "["+n+"]")
		}
	}
	slices.Sort(names)
	return names
}

func knownKeys(set *pflag.FlagSet, table string) string {
	var keys []string
	set.VisitAll(func(f *pflag.Flag) {
		if configurable(f) {
			keys = append(keys, f.Name)
		}
	})
	where := "at the top"
	if table != "" {
		where = "in [" + table + "]"
	}
	if len(keys) == 0 {
		return "none " + where
	}
	return "known " + where + ": " + strings.Join(keys, ", ")
}

// loadConfig applies the configuration file (--config, else the default if
// it exists) to the flags in set that the command line did not set.
func loadConfig(g *globals, cmd *command, set *pflag.FlagSet) error {
	file, explicit := g.config, g.config != ""
	if !explicit {
		file = defaultConfig
	}
	settings, err := readConfig(file, explicit)
	if err != nil || (settings == nil && !explicit) {
		return err
	}
	if err := applyConfig(file, settings, cmd, set); err != nil {
		return err
	}
	if abs, err := filepath.Abs(file); err == nil {
		file = abs
	}
	g.configRead = file
	return nil
}
