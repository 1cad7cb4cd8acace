package main

import (
	"flag"
	"os"
	"testing"

	"rekey/hsmio/softhsm"
)

// env holds the SoftHSM tokens of this test process ("source" and
// "target", see softhsm.TestEnv).
var env *softhsm.TestEnv

// beamFlags are the flags defined before any command ran (Beam's, the
// testing package's); rekey's commands define theirs on each call.
var beamFlags = map[string]bool{}

func TestMain(m *testing.M) {
	flag.CommandLine.VisitAll(func(f *flag.Flag) { beamFlags[f.Name] = true })
	os.Exit(softhsm.Main(m, &env, nil))
}

// resetFlags lets a test call mainExit more than once: each command defines
// its flags on flag.CommandLine, which may happen once per flag set. Beam's
// flags are carried over (their values too, so tests pass --runner and
// friends on every call).
func resetFlags() {
	old := flag.CommandLine
	fs := flag.NewFlagSet(old.Name(), flag.ContinueOnError)
	old.VisitAll(func(f *flag.Flag) {
		if beamFlags[f.Name] {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
	flag.CommandLine = fs
	clear(ours)
	clear(hidden)
}
