package hsmio

import (
	"sync"
	"time"
)

// SoftHSM2 rewrites its token file in place (truncate, then write) on the
// first login of a process: a process that dies between the two leaves the
// token empty, and every later process answers "token not found". Logins
// hold loginMu for reading; LoginsSettled lets a process that is about to
// exit on its own (a second Ctrl-C) wait for the ones in flight. Nothing
// can protect against SIGKILL: README's limits say so.
var loginMu sync.RWMutex

// loggingIn runs f (a call that may log in to a token) under the guard.
func loggingIn[T any](f func() (T, error)) (T, error) {
	loginMu.RLock()
	defer loginMu.RUnlock()
	return f()
}

// LoginsSettled waits, at most d, until no token login of this process is
// in progress, and keeps new ones from starting until release is called.
// A process about to exit on its own calls it and never releases. It
// reports whether the logins settled in time.
func LoginsSettled(d time.Duration) (ok bool, release func()) {
	got := make(chan struct{})
	go func() {
		loginMu.Lock()
		close(got)
	}()
	select {
	case <-got:
		return true, loginMu.Unlock
	case <-time.After(d):
		go func() {
			<-got
			loginMu.Unlock()
		}()
		return false, func() {}
	}
}
