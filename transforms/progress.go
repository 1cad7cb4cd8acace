package transforms

import (
	"sync/atomic"
	"time"
)

// Progress counts work done by DoFns in this process. The CLI prints it
// while a run goes on (direct and prism runners run DoFns in-process); the
// Beam metrics counters carry the same figures on distributed runners.
var Progress struct {
	Files   atomic.Int64
	Records atomic.Int64
	DEKs    atomic.Int64
	Failed  atomic.Int64
	Bytes   atomic.Int64
	Started atomic.Int64 // unix nanos of the first unit
}

func markStarted() {
	Progress.Started.CompareAndSwap(0, time.Now().UnixNano())
}

// ResetProgress zeroes the counters before a run: they are per process,
// and the failure budget reads them, so a process that runs several jobs
// (tests, programs embedding rekey) must start each at zero.
func ResetProgress() {
	Progress.Files.Store(0)
	Progress.Records.Store(0)
	Progress.DEKs.Store(0)
	Progress.Failed.Store(0)
	Progress.Bytes.Store(0)
	Progress.Started.Store(0)
}
