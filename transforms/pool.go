package transforms

import (
	"fmt"
	"log"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// parallel calls fn(i) for i in [0,n) on at most workers goroutines. A
// panic in fn (crypto11 panics on some HSM errors) becomes that item's
// error instead of taking the worker process down. It returns the first
// error fn returned, after every item ran.
func parallel(n, workers int, fn func(worker, i int) error) error {
	if workers > n {
		workers = n
	}
	if workers <= 1 {
		var first error
		for i := 0; i < n; i++ {
			if err := safeCall(fn, 0, i); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := safeCall(fn, w, i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}(w)
	}
	wg.Wait()
	return first
}

func safeCall(fn func(worker, i int) error, w, i int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error (panic): %v", r)
			log.Printf("rekey: recovered panic on item %d: %v\n%s", i, r, debug.Stack())
		}
	}()
	return fn(w, i)
}

// recoverTo turns a panic in the calling function into *err, so one bad
// item (crypto11's Seal panics on HSM errors) fails alone.
func recoverTo(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("internal error (panic): %v", r)
	}
}
