package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	if os.Getenv("REKEY_PROTECT_CHILD") != "1" {
		return
	}
	protectProcess(os.Stderr)
	d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	var r unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_CORE, &r)
	fmt.Printf("dumpable=%d core=%d\n", d, r.Cur)
	os.Exit(0)
}

// TestProcessIsNotDumpable (issue 15 item 6): rekey's main makes the
// process non-dumpable with a core size limit of 0, so a crash or a forced
// dump (gcore, SIGQUIT with GOTRACEBACK=crash) writes no core holding the
// cached DEKs; REKEY_ALLOW_CORE_DUMPS=1 keeps it dumpable, with a warning.
func TestProcessIsNotDumpable(t *testing.T) {
	for _, c := range []struct {
		allow, want string
	}{
		{"", "dumpable=0 core=0"},
		{"1", "dumpable=1"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "REKEY_PROTECT_CHILD=1", EnvAllowCoreDumps+"="+c.allow)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s=%q: %v\n%s (want %q)", EnvAllowCoreDumps, c.allow, err, out, c.want)
		}
		if c.allow == "1" && !strings.Contains(string(out), "unwrapped DEKs") {
			t.Errorf("allowing core dumps gives no warning:\n%s", out)
		}
	}
}
