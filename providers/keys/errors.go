package keys

import (
	"errors"
)

// Sentinel errors every key backend maps its failures onto.
var (
	ErrBadURI        = errors.New("bad key URI")
	ErrTokenNotFound = errors.New("token not found")
	ErrKeyNotFound   = errors.New("key not found")
	ErrAuthFailed    = errors.New("authentication to the key custodian failed")
	ErrNotPermitted  = errors.New("key does not permit the operation")
	ErrMechanism     = errors.New("wrap mechanism not supported by this key")
	ErrUnwrapFailed  = errors.New("unwrap failed (wrapped key corrupt, or wrapped by another KEK)")
	ErrBadKey        = errors.New("bad key material")
	ErrModule        = errors.New("cannot load key custodian module")
)

// retryable marks an error the runner may retry: a session or device error,
// not a property of the input.
type retryable struct{ err error }

func (r retryable) Error() string   { return r.err.Error() }
func (r retryable) Unwrap() error   { return r.err }
func (r retryable) Retryable() bool { return true }

// Retryable marks err as transient.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return retryable{err}
}

// IsRetryable reports whether err (or an error it wraps) is marked
// transient. Everything else is permanent.
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// ErrThrottled is a custodian asking rekey to slow down (HTTP 429, a
// PKCS#11 busy device). It is retryable: a run at too high a rate finishes
// slower, it does not fail records.
var ErrThrottled = errors.New("custodian throttled the request")

// IsFatal reports whether err stops a run rather than failing one record
// or DEK: the custodian refuses this process (authentication, a missing or
// unusable key or module), or stays unavailable after retries.
func IsFatal(err error) bool {
	for _, t := range []error{ErrAuthFailed, ErrModule, ErrTokenNotFound, ErrNotPermitted, ErrMechanism, ErrKeyNotFound} {
		if errors.Is(err, t) {
			return true
		}
	}
	return IsRetryable(err)
}
