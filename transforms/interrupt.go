package transforms

import (
	"errors"
	"strings"
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
	return isFatalKeyErr(err) || isOutputErr(err) || errors.Is(err, ErrInterrupted) || errors.Is(err, errFlightStopped)
}

// The cause of a stopped run: Beam wraps a DoFn's error in layers of its
// own context (the stage, the plan line) and on some paths drops it, so
// the first error that stops the run is kept here, in this process, for
// the CLI to print in one line. (A remote runner's workers are other
// processes: there the CLI falls back to the error Beam returns.)
var stopCause atomic.Pointer[string]

// noteStop keeps *err as the run's stop cause when it stops the run and is
// the first to; deferred by every migrating DoFn's Setup and ProcessElement.
func noteStop(err *error) {
	if *err == nil || errors.Is(*err, ErrInterrupted) || errors.Is(*err, ErrFailureBudget) || errors.Is(*err, errFlightStopped) {
		return
	}
	msg := strings.TrimSpace((*err).Error())
	stopCause.CompareAndSwap(nil, &msg)
}

// StopCause is the first error that stopped a DoFn of this process ("" if
// none).
func StopCause() string {
	if p := stopCause.Load(); p != nil {
		return *p
	}
	return ""
}

// ResetStop clears the stop request and cause before a run starts (a
// process that runs several pipelines, such as tests, starts each clean).
func ResetStop() {
	interrupted.Store(false)
	stopCause.Store(nil)
}
