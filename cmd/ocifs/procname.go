package main

import (
	"os"
	"path/filepath"
)

// daemonName is what an ocifs daemon is called in the process table.
const daemonName = "ocifs"

// nameProcess makes the process table say "ocifs" for a daemon started as
// argv[0] "ocifs". A mount daemon is re-executed through /proc/self/exe (so
// that it runs the same binary even if the file on disk was replaced), and
// the kernel names a process after the basename of the path it executed:
// "exe". Writing /proc/self/comm renames the main thread, which is what ps,
// top and pgrep show; threads the runtime started before this keep "exe",
// visible only with ps -T or top -H.
func nameProcess() {
	if len(os.Args) == 0 || filepath.Base(os.Args[0]) != daemonName {
		return
	}
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil || string(b) == daemonName+"\n" {
		return
	}
	_ = os.WriteFile("/proc/self/comm", []byte(daemonName), 0)
}
