package transforms

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFlightRunsUnitsConcurrently: with n slots, n units run at once (each
// waits for the others to have started), every result is emitted on the
// caller's goroutine, and drain returns once all have finished.
func TestFlightRunsUnitsConcurrently(t *testing.T) {
	const n = 3
	fl := newFlight(n)
	var started sync.WaitGroup
	started.Add(n)
	var emitted []string
	emit := func(r UnitResult) { emitted = append(emitted, r.Unit) } // not locked: only the caller's goroutine may emit
	for i := 0; i < 2*n; i++ {
		name := string(rune('a' + i))
		first := i < n
		if err := fl.start(emit, func(emit func(UnitResult)) error {
			if first {
				started.Done()
				started.Wait() // deadlocks unless n units are in flight together
			}
			emit(UnitResult{Unit: name})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fl.drain(emit); err != nil {
		t.Fatal(err)
	}
	if len(emitted) != 2*n {
		t.Fatalf("emitted %v, want %d results", emitted, 2*n)
	}
}

// TestFlightStopsOnError: a unit that stops the run stops the others at
// their next halt, no unit starts after it, and its error (not a sibling's
// errFlightStopped) is what start or drain returns.
func TestFlightStopsOnError(t *testing.T) {
	fl := newFlight(2)
	boom := errors.New("custodian refuses us")
	release := make(chan struct{})
	var sawStop atomic.Bool
	emit := func(UnitResult) {}
	// A long unit that runs until halted.
	if err := fl.start(emit, func(func(UnitResult)) error {
		<-release
		for {
			if err := fl.halt(); err != nil {
				sawStop.Store(errors.Is(err, errFlightStopped))
				return err
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := fl.start(emit, func(func(UnitResult)) error { close(release); return boom }); err != nil {
		t.Fatal(err)
	}
	ran := false
	err := fl.start(emit, func(func(UnitResult)) error { ran = true; return nil })
	if err == nil {
		err = fl.drain(emit)
	}
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want %v", err, boom)
	}
	fl.wg.Wait()
	if !sawStop.Load() {
		t.Fatal("the unit in flight did not see errFlightStopped")
	}
	if ran {
		t.Fatal("a unit started after the error")
	}
	if !stops(errFlightStopped) {
		t.Fatal("errFlightStopped must stop a unit, not fail its file")
	}
}

// TestFlightReserve: files whose row groups fit in flightBytes together run
// side by side; a file that does not fit waits for the running one; a
// single file always runs, however large.
func TestFlightReserve(t *testing.T) {
	fl := newFlight(2)
	big := fl.reserve(2 * flightBytes) // alone: runs
	got := make(chan struct{})
	go func() { fl.reserve(flightBytes / 2)(); close(got) }()
	select {
	case <-got:
		t.Fatal("a file started while a larger one's row groups filled the budget")
	case <-time.After(50 * time.Millisecond):
	}
	big()
	<-got
	a := fl.reserve(flightBytes / 2)
	b := fl.reserve(flightBytes / 2) // fits with a: must not block
	a()
	b()
	if fl.reserved != 0 {
		t.Fatalf("reserved %d after every release", fl.reserved)
	}
}

// TestFlightUnitPanicStopsTheRun: a unit that panics on its goroutine stops
// the run with the panic as its cause instead of ending the process.
func TestFlightUnitPanicStopsTheRun(t *testing.T) {
	fl := newFlight(2)
	emit := func(UnitResult) {}
	if err := fl.start(emit, func(func(UnitResult)) error { panic("corrupt page") }); err != nil {
		t.Fatal(err)
	}
	err := fl.drain(emit)
	if err == nil || !strings.Contains(err.Error(), "panic") || !strings.Contains(err.Error(), "corrupt page") {
		t.Fatalf("drain: %v, want the unit's panic", err)
	}
}
