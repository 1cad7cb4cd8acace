package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"

	"rekey/providers/storage"
)

// Kind sorts object-store failures by what the caller should do.
type Kind int

const (
	// KindPermanent is any other refusal: retrying will not help.
	KindPermanent Kind = iota
	// KindTransient is throttling, a 5xx or a broken connection: retried
	// here with backoff, and marked retryable for the runner after that.
	KindTransient
	// KindNotFound is a missing key or an empty prefix.
	KindNotFound
	// KindNoBucket is a missing bucket.
	KindNoBucket
	// KindDenied is a refused credential, signature or policy.
	KindDenied
	// KindConfig is a malformed location or client configuration.
	KindConfig
)

func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient error"
	case KindNotFound:
		return "not found"
	case KindNoBucket:
		return "no such bucket"
	case KindDenied:
		return "access denied"
	case KindConfig:
		return "bad configuration"
	}
	return "refused"
}

// Sentinels for errors.Is; not-found is storage.ErrNotFound.
var (
	ErrNoBucket     = errors.New("no such bucket")
	ErrAccessDenied = errors.New("access denied")
)

// ServiceError is a server's answer, reduced to what is safe to print:
// status, code and request ID. A backend never copies the server's
// message, which for signature errors echoes the string to sign.
type ServiceError struct {
	Kind      Kind
	Status    int
	Code      string
	RequestID string
}

func (e *ServiceError) Error() string {
	s := fmt.Sprintf("HTTP %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.RequestID != "" {
		s += ", request " + e.RequestID
	}
	return s
}

// Error is what every objstore call returns: operation, location, kind,
// the server's code and a hint.
type Error struct {
	Op, Loc     string
	Bucket, Key string
	Kind        Kind
	Status      int
	Code        string
	RequestID   string
	Hint        string
	Err         error // transport or config error; nil for a server answer
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %s", e.Op, e.Loc, e.Kind)
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d", e.Status)
		if e.Code != "" {
			b.WriteString(" " + e.Code)
		}
		if e.RequestID != "" {
			b.WriteString(", request " + e.RequestID)
		}
		b.WriteString(")")
	}
	if e.Kind == KindNoBucket || e.Kind == KindDenied {
		fmt.Fprintf(&b, " [bucket %q, key %q]", e.Bucket, e.Key)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	if e.Hint != "" {
		b.WriteString(" (" + e.Hint + ")")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches storage.ErrNotFound, ErrNoBucket and ErrAccessDenied.
func (e *Error) Is(target error) bool {
	switch target {
	case storage.ErrNotFound:
		return e.Kind == KindNotFound
	case ErrNoBucket:
		return e.Kind == KindNoBucket
	case ErrAccessDenied:
		return e.Kind == KindDenied
	}
	return false
}

// Retryable tells the runner whether a bundle failing with this error is
// worth retrying (same contract as keys.IsRetryable).
func (e *Error) Retryable() bool { return e.Kind == KindTransient }

// kindOf classifies an error from a Bucket.
func kindOf(err error) Kind {
	if err == nil {
		return KindPermanent
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	var se *ServiceError
	if errors.As(err, &se) {
		return se.Kind
	}
	var c *classified
	if errors.As(err, &c) {
		return c.kind
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return KindPermanent
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return KindConfig
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, errShortBody) {
		return KindTransient
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return KindTransient
	}
	if s := err.Error(); strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe") ||
		strings.Contains(s, "server closed idle connection") || strings.Contains(s, "use of closed network connection") {
		return KindTransient
	}
	return KindPermanent
}

// KindOfStatus is the usual classification of an HTTP status and error
// code shared by S3 and OSS.
func KindOfStatus(status int, code string) Kind {
	switch code {
	case "NoSuchKey", "NoSuchUpload", "NotFound":
		return KindNotFound
	case "NoSuchBucket":
		return KindNoBucket
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
		"TokenRefreshRequired", "InvalidSecurity", "AllAccessDisabled", "AccountProblem", "RequestTimeTooSkewed",
		"SecurityTokenExpired", "InvalidObjectState", "UserDisable":
		return KindDenied
	case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable",
		"RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "BandwidthLimitExceeded",
		"OperationAborted", "QpsLimitExceeded", "ConditionalRequestConflict":
		return KindTransient
	case "InvalidBucketName", "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidRegion", "InvalidArgument":
		return KindConfig
	}
	switch {
	case status == 404:
		return KindNotFound
	case status == 401 || status == 403:
		return KindDenied
	case status == 408 || status == 429 || status >= 500:
		return KindTransient
	case status == 301 || status == 307:
		return KindConfig
	}
	return KindPermanent
}

// Classified marks an error that has no server answer (bad configuration,
// no credentials) with its kind; its message is kept.
func Classified(kind Kind, err error) error { return &classified{kind, err} }

type classified struct {
	kind Kind
	err  error
}

func (c *classified) Error() string { return c.err.Error() }
func (c *classified) Unwrap() error { return c.err }

var errShortBody = errors.New("object body shorter than the range asked for")

// Retry is the backoff policy for transient errors: full jitter, doubling
// from Base up to Max, at most Attempts tries in all.
type Retry struct {
	Attempts  int
	Base, Max time.Duration
	// Sleep waits; tests replace it to count and skip the waits.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (r Retry) defaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = 8
	}
	if r.Base <= 0 {
		r.Base = 100 * time.Millisecond
	}
	if r.Max <= 0 {
		r.Max = 10 * time.Second
	}
	if r.Sleep == nil {
		r.Sleep = sleep
	}
	return r
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// do runs fn until it succeeds, fails with a non-transient error, or the
// attempts run out.
func (r Retry) do(ctx context.Context, fn func() error) error {
	var err error
	for i := 0; i < r.Attempts; i++ {
		if i > 0 {
			d := r.Base << (i - 1)
			if d > r.Max || d <= 0 {
				d = r.Max
			}
			if serr := r.Sleep(ctx, rand.N(d)+1); serr != nil {
				return err
			}
		}
		if cerr := ctxErr(ctx); cerr != nil {
			if err == nil {
				err = cerr
			}
			return err
		}
		err = fn()
		if err == nil || kindOf(err) != KindTransient {
			return err
		}
	}
	return fmt.Errorf("gave up after %d attempts: %w", r.Attempts, err)
}
