package hsmio

import (
	"testing"
	"time"
)

// A second Ctrl-C exits only once no token login is in progress (SoftHSM2
// rewrites its token file then), and waits a bounded time for it.
func TestLoginsSettled(t *testing.T) {
	started, finish := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		_, _ = loggingIn(func() (int, error) { close(started); <-finish; return 0, nil })
		close(done)
	}()
	<-started
	if ok, _ := LoginsSettled(30 * time.Millisecond); ok {
		t.Fatal("settled while a login was in progress")
	}
	close(finish)
	<-done
	ok, release := LoginsSettled(5 * time.Second)
	if !ok {
		t.Fatal("logins did not settle after the last one finished")
	}
	// New logins wait until release.
	entered := make(chan struct{})
	go func() {
		_, _ = loggingIn(func() (int, error) { close(entered); return 0, nil })
	}()
	select {
	case <-entered:
		t.Fatal("a login started while logins were held")
	case <-time.After(30 * time.Millisecond):
	}
	release()
	<-entered
}
