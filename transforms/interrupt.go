package transforms

import (
	"errors"
	"sync/atomic"
)

// A signal to rekey asks the run to stop: no unit starts after it, and a
// unit in flight stops at its next batch, dropping its pending outputs (a
// pending object never appears under its final name). Committed units stay
// committed; a --resume finishes the rest. The flag is per process: on a
// remote runner the launcher cancels the job through the runner instead.
var interrupted atomic.Bool

// ErrInterrupted stops a unit because the process was asked to stop.
var ErrInterrupted = errors.New("interrupted: rekey was asked to stop (SIGINT or SIGTERM)")

// Interrupt asks this process's DoFns to stop taking work.
func Interrupt() { interrupted.Store(true) }

// Interrupted reports whether Interrupt was called.
func Interrupted() bool { return interrupted.Load() }

// checkInterrupt is called at the start of every unit and between its
// batches.
func checkInterrupt() error {
	if interrupted.Load() {
		return ErrInterrupted
	}
	return nil
}

// stops reports errors that end the run rather than failing a unit: a
// custodian that refuses us, output that cannot be written, a stop request.
func stops(err error) bool {
	return isFatalKeyErr(err) || isOutputErr(err) || errors.Is(err, ErrInterrupted)
}
