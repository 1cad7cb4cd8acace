package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// Why a helper process: Go starts children with vfork (CLONE_VM), and on
// exec Linux folds the hiwater RSS of the mm being left (the parent's) into
// the child's ru_maxrss. Measured straight from the bench, every rekey run
// would report at least the bench's own peak. `rekey-bench spawn` is a
// fresh, small process: the rekey it starts inherits only its few MiB.

// spawnMain runs `rekey-bench spawn RSSFILE CMD ARGS...`: CMD with this
// process's stdio, then writes CMD's ru_maxrss in bytes (from the wait4
// that reaped it) and its CPU time in ns to RSSFILE, and exits with CMD's
// exit code.
func spawnMain(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rekey-bench spawn RSSFILE CMD [ARGS...]")
		return 2
	}
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		fmt.Fprintln(os.Stderr, "rekey-bench spawn:", err)
		return 1
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		// Linux reports ru_maxrss in KiB. Then the CPU time (user + system,
		// ns): on a shared machine, what a run costs shows in its CPU time
		// more steadily than in its wall time.
		cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		_ = os.WriteFile(args[0], []byte(strconv.FormatInt(ru.Maxrss*1024, 10)+" "+strconv.FormatInt(int64(cpu), 10)), 0o644)
	}
	return code
}
