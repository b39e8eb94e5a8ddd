package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// profileEnv names a file prefix the serving commands (mount, run) write
// a CPU profile of themselves to (PREFIX.PID), for the profiles
// BENCHMARKS.md cites.
const profileEnv = "CGFS_CPUPROFILE"

// startProfile starts the CPU profile profileEnv asks for; stop ends it.
func startProfile() (stop func()) {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid()))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
