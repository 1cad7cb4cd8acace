package keys

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"rekey/schemas"
)

// Ref is a parsed key reference.
type Ref struct {
	// Scheme is the URI scheme ("pkcs11").
	Scheme string
	// Canonical names the key and nothing else (no PIN source, module
	// path or credentials): what DEK tables and ledgers record, and what
	// two references are compared by.
	Canonical string
	// Redacted is safe for messages and reports.
	Redacted string
	// Custodian names the service or device that holds the key (an HSM
	// token on a module, a KMS instance in a region): rate limits are
	// shared per custodian, and "same custodian" decides server-side
	// rewraps.
	Custodian string
}

// Scheme is a custodian backend.
type Scheme struct {
	Name string // URI scheme, without the colon
	// Open opens a KEK. Secrets (PINs, credentials) are resolved by the
	// backend from references inside the URI or its SDK's environment,
	// never passed in clear.
	Open func(ctx context.Context, uri string, opts Options) (KEK, error)
	// Parse parses a reference without contacting the custodian.
	Parse func(uri string) (Ref, error)
	// Mechanisms are the wrap mechanisms the scheme owns, as written in a
	// DEK table's wrap column.
	Mechanisms []string
	// Same, when set, decides whether two references that both parse name
	// the same key, where equal canonical forms are too strict (PKCS#11:
	// a reference without a key type matches either type).
	Same func(a, b string) bool
	// Example is a reference shown in errors ("pkcs11:token=...").
	Example string
	// Import is the package that registers the scheme, for "unknown
	// scheme" errors.
	Import string
	// Rate is the default budget, in operations per second, of one
	// custodian of this scheme when the job sets none (--hsm-rate): the
	// vendor's published request quota, with its source in the scheme's
	// package doc. 0: no default limit (an HSM on this machine).
	Rate float64
	// Concurrency is how many operations a worker process keeps in flight
	// on one custodian of this scheme when the job sets no --workers: a
	// remote API answers in milliseconds to tens of them, so waiting on
	// one call per CPU would leave its quota idle. 0: one per CPU (an HSM
	// on this machine, where more goroutines only queue).
	Concurrency int
}

var (
	regMu    sync.RWMutex
	registry = map[string]Scheme{}
)

// Register makes a backend available for its URI scheme. It panics on a
// duplicate scheme, or a mechanism another scheme already owns: either is
// a build mistake.
func Register(s Scheme) {
	regMu.Lock()
	defer regMu.Unlock()
	if s.Name == "" || s.Open == nil || s.Parse == nil {
		panic("keys: Register needs a name, an opener and a parser")
	}
	if _, dup := registry[s.Name]; dup {
		panic(fmt.Sprintf("keys: backend for scheme %q registered twice", s.Name))
	}
	for _, o := range registry {
		for _, m := range s.Mechanisms {
			if slices.Contains(o.Mechanisms, m) {
				panic(fmt.Sprintf("keys: mechanism %q registered by schemes %q and %q", m, o.Name, s.Name))
			}
		}
	}
	registry[s.Name] = s
	schemas.RegisterWrap(s.Mechanisms...)
}

func schemeOf(uri string) (Scheme, error) {
	name, _, ok := strings.Cut(uri, ":")
	if !ok || !validScheme(name) {
		return Scheme{}, fmt.Errorf("%w: %q has no scheme (expected e.g. pkcs11:token=...;object=...)", ErrBadURI, redactRaw(uri))
	}
	regMu.RLock()
	s, found := registry[name]
	regMu.RUnlock()
	if !found {
		var hints []string
		for _, k := range known {
			if k.name == name {
				hints = append(hints, "import _ \""+k.pkg+"\"")
			}
		}
		hint := ""
		if len(hints) > 0 {
			hint = "; this build lacks it: " + strings.Join(hints, ", ")
		}
		return Scheme{}, fmt.Errorf("%w: no key backend for scheme %q (registered: %s)%s", ErrBadURI, name, strings.Join(Schemes(), ", "), hint)
	}
	return s, nil
}

// validScheme reports whether name is an RFC 3986 scheme: a letter, then
// letters, digits, '+', '-' or '.'.
func validScheme(name string) bool {
	for i, c := range name {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return name != ""
}

// known lists the schemes rekey ships and the package registering each,
// so an "unknown scheme" error says which import is missing.
var known = []struct{ name, pkg string }{
	{"pkcs11", "rekey/hsmio"},
	{"awskms", "rekey/providers/awskms"},
	{"ibmkp", "rekey/providers/ibmkp"},
	{"alikms", "rekey/providers/alikms"},
	{"alikms-instance", "rekey/providers/alikms"},
}

// DefaultRate is the default budget (operations per second) of k's
// custodian: its scheme's Rate, 0 when it has none.
func DefaultRate(k KEK) float64 {
	s, err := schemeOf(k.URI())
	if err != nil {
		return 0
	}
	return s.Rate
}

// DefaultConcurrency is the Concurrency of uri's scheme (0 when it has
// none, or uri is not a known key reference).
func DefaultConcurrency(uri string) int {
	s, err := schemeOf(uri)
	if err != nil {
		return 0
	}
	return s.Concurrency
}

// Open resolves uri with the backend registered for its scheme.
func Open(ctx context.Context, uri string, opts Options) (KEK, error) {
	s, err := schemeOf(uri)
	if err != nil {
		return nil, err
	}
	if opts.Wrap != "" && len(s.Mechanisms) > 0 && !slices.Contains(s.Mechanisms, opts.Wrap) {
		return nil, fmt.Errorf("%w: %q is not a %s mechanism (%s)", ErrMechanism, opts.Wrap, s.Name, strings.Join(s.Mechanisms, ", "))
	}
	return s.Open(ctx, uri, opts)
}

// ParseRef parses a key reference with its scheme's parser.
func ParseRef(uri string) (Ref, error) {
	s, err := schemeOf(uri)
	if err != nil {
		return Ref{}, err
	}
	return s.Parse(uri)
}

// Redact is a key reference safe for messages: the scheme's redacted form,
// or, when it does not parse, the reference cut before anything that may
// carry a secret.
func Redact(uri string) string {
	if s, err := schemeOf(uri); err == nil {
		if r, err := s.Parse(uri); err == nil {
			return r.Redacted
		}
	}
	return redactRaw(uri)
}

// redactRaw is Redact for a reference no scheme parses: at most 256 bytes,
// nothing after a '?' or '#' (where PIN sources and credentials go).
func redactRaw(uri string) string {
	if len(uri) > 256 {
		uri = uri[:256] + "..."
	}
	if i := strings.IndexAny(uri, "?#"); i >= 0 {
		return uri[:i] + "?..."
	}
	return uri
}

// SameKey reports whether two references name the same key (compared by
// canonical form: module paths, PIN sources and credentials are ignored).
func SameKey(a, b string) bool {
	same, err := SameRef(a, b)
	return err == nil && same
}

// SameRef reports whether the reference ref (read from a DEK table) names
// the key kek. An error means ref is not a valid reference of its scheme.
// References of a scheme this build does not register compare exactly,
// without their query part.
func SameRef(ref, kek string) (bool, error) {
	rs, _, ok := strings.Cut(ref, ":")
	ks, _, _ := strings.Cut(kek, ":")
	if !ok || rs != ks {
		return false, nil
	}
	s, err := schemeOf(kek)
	if err != nil {
		cut := func(u string) string { u, _, _ = strings.Cut(u, "?"); return u }
		return cut(ref) == cut(kek), nil
	}
	rr, err := s.Parse(ref)
	if err != nil {
		return false, err
	}
	rk, err := s.Parse(kek)
	if err != nil {
		return false, err
	}
	if s.Same != nil {
		return s.Same(ref, kek), nil
	}
	return rr.Canonical == rk.Canonical, nil
}

// Matches reports whether a DEK table's kek reference names k. A backend
// may refine what "same key" means (PKCS#11: a reference without a key
// type matches either type) with a Matches method.
func Matches(k KEK, ref string) bool {
	for {
		if m, ok := k.(interface{ Matches(string) bool }); ok {
			return m.Matches(ref)
		}
		in, ok := k.(interface{ Inner() KEK })
		if !ok {
			break
		}
		k = in.Inner()
	}
	return SameKey(k.URI(), ref) || k.URI() == ref
}

// Custodian is the custodian identity of k (see Ref.Custodian).
func Custodian(k KEK) string {
	if c, ok := find[interface{ CustodianID() string }](k); ok {
		return c.CustodianID()
	}
	if r, err := ParseRef(k.URI()); err == nil && r.Custodian != "" {
		return r.Custodian
	}
	return k.URI()
}

// Schemes lists the registered schemes.
func Schemes() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	var s []string
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Mechanisms lists every registered wrap mechanism, scheme by scheme.
func Mechanisms() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	names := make([]string, 0, len(registry))
	for k := range registry {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		out = append(out, registry[n].Mechanisms...)
	}
	return out
}

// KnownMechanism reports whether a registered scheme owns mechanism m.
func KnownMechanism(m string) bool { return slices.Contains(Mechanisms(), m) }

// MechanismScheme names the scheme owning mechanism m ("" if none).
func MechanismScheme(m string) string {
	regMu.RLock()
	defer regMu.RUnlock()
	for n, s := range registry {
		if slices.Contains(s.Mechanisms, m) {
			return n
		}
	}
	return ""
}

// Example is a reference of scheme name for error messages.
func Example(name string) string {
	regMu.RLock()
	defer regMu.RUnlock()
	return registry[name].Example
}
