// Command faultproxy serves a fault-injecting front for a registry (the
// fs/fstest Faults handler) on a port, for benchmarks and by-hand tests of
// ocifs under a misbehaving registry:
//
//	faultproxy -listen 127.0.0.1:5001 -upstream 127.0.0.1:5000 \
//	    -rule 'path=/blobs/ range=yes fault=status:503 times=3' \
//	    -rule 'path=/blobs/ fault=reset:4096 times=1'
//
// Each -rule is a fstest.ParseRule text; the first matching rule with
// requests left answers, every other request is proxied. It runs until
// SIGINT or SIGTERM, then prints how many requests each rule answered.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ocifs/ocifs/fs/fstest"
)

// rules collects repeated -rule flags.
type rules []string

func (r *rules) String() string     { return strings.Join(*r, "; ") }
func (r *rules) Set(s string) error { *r = append(*r, s); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:5001", "address to serve the front on")
	upstream := flag.String("upstream", "", "the registry to proxy to (host:port or URL)")
	var texts rules
	flag.Var(&texts, "rule", "a fault rule, e.g. 'path=/blobs/ range=yes fault=status:503 times=2' (repeatable)")
	flag.Parse()
	if err := run(*listen, *upstream, texts); err != nil {
		fmt.Fprintln(os.Stderr, "faultproxy:", err)
		os.Exit(1)
	}
}

func run(listen, upstream string, texts []string) error {
	if upstream == "" {
		return errors.New("-upstream is required")
	}
	front, err := fstest.NewFaults(upstream)
	if err != nil {
		return err
	}
	var parsed []*fstest.Rule
	for _, s := range texts {
		ru, err := fstest.ParseRule(s)
		if err != nil {
			return err
		}
		parsed = append(parsed, ru)
	}
	front.Add(parsed...)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	srv := &http.Server{Handler: front, ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Printf("faultproxy: http://%s -> %s, %d rules\n", ln.Addr(), upstream, len(parsed))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	front.Release()
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	for i, ru := range parsed {
		fmt.Printf("rule %d %q: %d requests\n", i+1, texts[i], front.Hits(ru))
	}
	return nil
}
