package transforms

import (
	"errors"
	"fmt"
)

// Errors writing what rekey produces (the target dataset, the target DEK
// table, the ledger) are fatal for the run, not failures of the record or
// DEK being written: a full disk or a refused bucket fails every later unit
// the same way, and the data itself is fine. The run stops (exit 1) and a
// --resume after the cause is fixed finishes it.

// OutputError is an error writing one of rekey's outputs.
type OutputError struct {
	Path string
	Err  error
}

func (e *OutputError) Error() string {
	return fmt.Sprintf("write %s: %v (rekey stops: fix the cause, e.g. free space or permissions, then re-run with --resume)", e.Path, e.Err)
}

func (e *OutputError) Unwrap() error { return e.Err }

// outputErr marks err as an error writing path (nil stays nil).
func outputErr(path string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OutputError
	if errors.As(err, &oe) {
		return err
	}
	return &OutputError{Path: path, Err: err}
}

// isOutputErr reports whether err is an error writing an output.
func isOutputErr(err error) bool {
	var oe *OutputError
	return errors.As(err, &oe)
}
