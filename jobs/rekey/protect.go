package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// EnvAllowCoreDumps keeps rekey dumpable, for debugging a crash: a core
// file then holds every DEK in the cache (source and target).
const EnvAllowCoreDumps = "REKEY_ALLOW_CORE_DUMPS"

// protectProcess keeps unwrapped keys out of core files and away from
// same-user debuggers: the process is made non-dumpable (no core file, no
// ptrace attach by other processes of the user, /proc/<pid>/mem closed to
// them) and its core size limit set to 0. What remains (swap, root) is in
// docs/SECURITY.md.
func protectProcess(stderr io.Writer) {
	if os.Getenv(EnvAllowCoreDumps) == "1" {
		fmt.Fprintf(stderr, "rekey: %s=1: this process may dump core, and a core file holds unwrapped DEKs; do not keep or share it\n", EnvAllowCoreDumps)
		return
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fmt.Fprintf(stderr, "rekey: could not make the process non-dumpable (%v): a core dump would hold unwrapped DEKs; disable core dumps on this host\n", err)
	}
	_ = unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0})
}
