package transforms

import (
	"errors"
	"fmt"
	"log"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// flight keeps several record units in flight inside one DoFn bundle. Beam's
// direct runner hands a stage one bundle holding every file and calls
// ProcessElement on one goroutine, so a DoFn that finished each file before
// returning kept one file (one Parquet reader, one writer) in flight: on two
// cores, one of them mostly waited. With a flight, ProcessElement starts the
// file on its own goroutine and returns once fewer than n files are in
// flight; the results of finished files are emitted by later ProcessElement
// calls and by FinishBundle, on the bundle goroutine (Beam's emitters are
// not safe from other goroutines). Each file keeps its own ordered writer and
// its own ledger part, so what is committed, and how a resume finds it, is
// unchanged. Distributed runners that run bundles concurrently get the same
// code: a bundle of one file is one unit in flight.
//
// The first unit error that stops the run stops the flight: no unit starts
// after it, the units in flight stop at their next batch (dropping their
// pending outputs, as on an interrupt), and the error is returned once they
// have.
type flight struct {
	// Memory: a file's writer holds its current row group until the
	// row group ends, so files in flight hold their row groups at once.
	// A file waits to start its rows until its largest row group fits in
	// flightBytes with the others' (one file always runs): small row
	// groups run side by side, large ones one after the other, as before.
	memMu    sync.Mutex
	memFree  *sync.Cond
	reserved int64

	slots   chan struct{}
	wake    chan struct{}
	wg      sync.WaitGroup
	stopped atomic.Bool

	mu      sync.Mutex
	results []UnitResult
	err     error
}

// errFlightStopped stops a unit because another unit of its flight stopped
// the run; it is never the run's cause.
var errFlightStopped = errors.New("stopped: another file of this run stopped it")

// flightBytes bounds the row-group bytes (uncompressed, from the files'
// footers) of the files in flight together while they read and write rows
// (a file that has written its rows gives its share back while it writes
// its footer and commits, so the next one starts then). On two cores one
// file with 36 MB row groups already keeps both busy (reader, crypto pool
// and writer overlap); two of them cost 110-130 MiB more peak RSS for no
// gain, measured twice.
const flightBytes = 64 << 20

func newFlight(n int) *flight {
	fl := &flight{slots: make(chan struct{}, max(n, 1)), wake: make(chan struct{}, 1)}
	fl.memFree = sync.NewCond(&fl.memMu)
	return fl
}

// reserve waits until a file whose largest row group is n bytes fits with
// the files already running, and returns the release. A flight that stops
// lets a waiting file go, to see the stop at its first halt.
func (fl *flight) reserve(n int64) (release func()) {
	fl.memMu.Lock()
	for fl.reserved > 0 && fl.reserved+n > flightBytes && !fl.stopped.Load() {
		fl.memFree.Wait()
	}
	fl.reserved += n
	fl.memMu.Unlock()
	return func() {
		fl.memMu.Lock()
		fl.reserved -= n
		fl.memMu.Unlock()
		fl.memFree.Broadcast()
	}
}

// halt is what a unit in flight checks between batches.
func (fl *flight) halt() error {
	if err := checkInterrupt(); err != nil {
		return err
	}
	if fl.stopped.Load() {
		return errFlightStopped
	}
	return nil
}

// start runs unit on its own goroutine once a slot is free, emitting the
// results of finished units while it waits. It returns the error of a unit
// that stopped the run, after every unit in flight has returned.
func (fl *flight) start(emit func(UnitResult), unit func(emit func(UnitResult)) error) error {
	for {
		if err := fl.flush(emit); err != nil {
			return fl.drain(emit)
		}
		select {
		case fl.slots <- struct{}{}:
			if fl.stopped.Load() {
				// A unit failed after the flush above: start nothing.
				<-fl.slots
				continue
			}
			fl.wg.Add(1)
			go func() {
				defer fl.wg.Done()
				err := runUnit(unit, func(r UnitResult) {
					fl.mu.Lock()
					fl.results = append(fl.results, r)
					fl.mu.Unlock()
				})
				if err != nil {
					fl.fail(err)
				}
				<-fl.slots
				select {
				case fl.wake <- struct{}{}:
				default:
				}
			}()
			return nil
		case <-fl.wake:
		}
	}
}

// runUnit calls unit, a panic becoming its error: on a goroutine of its
// own, a panic (the Parquet reader's, on a corrupt file) would end the
// process with a stack trace instead of stopping the run with its cause,
// as Beam does for a panic on the bundle goroutine.
func runUnit(unit func(emit func(UnitResult)) error, emit func(UnitResult)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error (panic): %v", r)
			log.Printf("rekey: recovered panic in a unit in flight: %v\n%s", r, debug.Stack())
		}
	}()
	return unit(emit)
}

func (fl *flight) fail(err error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.err == nil || errors.Is(fl.err, errFlightStopped) {
		fl.err = err
	}
	fl.stopped.Store(true)
	fl.memMu.Lock() // a waiter checks stopped under memMu: no lost wake-up
	fl.memMu.Unlock()
	fl.memFree.Broadcast()
}

// flush emits the results of finished units and returns the first error.
func (fl *flight) flush(emit func(UnitResult)) error {
	fl.mu.Lock()
	res, err := fl.results, fl.err
	fl.results = nil
	fl.mu.Unlock()
	for _, r := range res {
		emit(r)
	}
	return err
}

// drain waits for every unit in flight, emits their results and returns
// the first error: FinishBundle's end of the flight, and the way out of one
// that stopped.
func (fl *flight) drain(emit func(UnitResult)) error {
	fl.wg.Wait()
	return fl.flush(emit)
}
