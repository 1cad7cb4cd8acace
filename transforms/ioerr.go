package transforms

import "rekey/transforms/rowio"

// outputErr marks err as an error writing path: fatal for the run (see
// rowio.OutputError).
func outputErr(path string, err error) error { return rowio.OutputErr(path, err) }

// isOutputErr reports whether err is an error writing an output.
func isOutputErr(err error) bool { return rowio.IsOutputErr(err) }
