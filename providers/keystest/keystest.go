// Package keystest is the conformance suite every key backend passes: a
// custodian scheme registered with providers/keys (PKCS#11 through hsmio,
// each KMS provider) runs the same checks, so a new backend costs a few
// lines of test:
//
//	func TestConformance(t *testing.T) {
//		keystest.Run(t, keystest.Backend{
//			Mechanisms: []string{"mykms-gcm"},
//			Open:       keystest.OpenRef("mykms:eu/key-1?credential=env:MYKMS_TOKEN"),
//			Other:      keystest.OpenRef("mykms:eu/key-2?credential=env:MYKMS_TOKEN"),
//			Missing:    "mykms:eu/no-such-key?credential=env:MYKMS_TOKEN",
//			Binds:      func(string) bool { return true },
//		})
//	}
//
// It checks what the pipeline relies on from any custodian: every secret
// length a mechanism declares round-trips; a wrapped key cannot move to
// another binding (where the mechanism binds), another key or another
// mechanism, and a damaged one is refused with keys.ErrUnwrapFailed rather
// than answered with a wrong key or a panic; failures carry the sentinel and
// the retry class the runner acts on; secrets (DEKs, PINs, credentials)
// appear in no error and no printed value; references parse, compare and
// redact; the KEK is safe for concurrent use; optional abilities
// (Generator, Preflighter) work and survive the decorators.
//
// Limits: it sees one process and one custodian. Rate limits and quotas of a
// real service, timing side channels and key rotation are each backend's
// own tests; server-side Rewrap is checked from Open to Other only (Rewrap
// skips when the custodian cannot do that). A mechanism either binds all of a
// keys.Binding or none of it (Backend.Binds). Secrets are looked for as raw
// bytes, hex, Go's decimal byte lists (in windows of 8 bytes) and base64 of
// the whole secret (of a backend secret: its whole value only); other
// encodings are not. Without Backend.Transient the transient-failure path
// is not exercised.
package keystest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"rekey/providers/keys"
	"rekey/schemas"
)

// Backend describes a key backend to the suite.
type Backend struct {
	// Mechanisms are the wrap mechanisms to test: the scheme's, or those
	// the test custodian offers. Each must be registered (keys.Register).
	Mechanisms []string
	// Open returns a KEK that wraps with mech, ready to wrap and unwrap.
	// It is called once per mechanism.
	Open func(t *testing.T, mech string) keys.KEK
	// Other returns a different key of the same scheme and mechanism on
	// the same custodian (the wrong-key and reference tests).
	Other func(t *testing.T, mech string) keys.KEK
	// Missing is a syntactically valid reference, written as a user
	// writes one (with its PIN source or credentials), to a key that does
	// not exist on Open's custodian.
	Missing string
	// Binds reports whether mech binds a wrapped key to its keys.Binding
	// (DEKID, Context and AAD all). nil: no mechanism binds.
	Binds func(mech string) bool
	// SecretLens lists the secret lengths mech wraps. nil, or an empty
	// answer: every length from keys.MinSecret to keys.MaxSecret. Other
	// lengths must be refused by Wrap or round-trip.
	SecretLens func(mech string) []int
	// Secrets the backend holds (PINs, API keys): they must appear in no
	// error, printed KEK or check, raw or encoded.
	Secrets [][]byte
	// Private are parts of references that must not appear in their
	// canonical or redacted forms: module paths, PIN sources, credential
	// names. Errors may name them (they say where to look).
	Private []string
	// Transient, when set, returns a KEK on Open's key whose next Unwrap
	// fails once with a transient error; later operations succeed.
	Transient func(t *testing.T, mech string) keys.KEK
	// KnownFailures maps subtests (their path below Run, as
	// "Corrupt/aes-kwp/empty") to why they fail today: a bug reported but
	// not fixed yet. Such a subtest logs its failures instead of failing,
	// and fails once it passes, so that the entry is removed with the fix.
	KnownFailures map[string]string
}

// OpenRef returns an Open (or Other) function that opens ref through the
// registry, wrapping with the mechanism asked for.
func OpenRef(ref string) func(t *testing.T, mech string) keys.KEK {
	return func(t *testing.T, mech string) keys.KEK {
		t.Helper()
		k, err := keys.Open(t.Context(), ref, keys.Options{Wrap: mech})
		if err != nil {
			t.Fatalf("open %s for %s: %v", keys.Redact(ref), mech, err)
		}
		return k
	}
}

// noSuchMechanism is a mechanism no scheme registers.
const noSuchMechanism = "keystest-no-such-mechanism"

// Run runs the suite against b.
func Run(t *testing.T, b Backend) {
	t.Helper()
	if err := b.validate(); err != nil {
		t.Fatalf("keystest.Backend: %v", err)
	}
	s := &suite{b: b, open: map[string]keys.KEK{}, other: map[string]keys.KEK{}}
	for _, m := range b.Mechanisms {
		s.open[m], s.other[m] = b.Open(t, m), b.Other(t, m)
		for name, k := range map[string]keys.KEK{"Open": s.open[m], "Other": s.other[m]} {
			if k == nil {
				t.Fatalf("Backend.%s(%q) returned no KEK", name, m)
			}
			if got := k.Mechanism(); got != m {
				t.Fatalf("Backend.%s(%q) returned a KEK wrapping with %q", name, m, got)
			}
		}
		if s.open[m].URI() == s.other[m].URI() {
			t.Fatalf("Backend.Other(%q) returned the same key as Open (%s)", m, s.open[m].URI())
		}
	}
	s.needles = needlesOf(0, b.Secrets...)
	tests := []subtest{
		{name: "RoundTrip", each: s.roundTrip},
		{name: "Unbound", each: s.unbound},
		{name: "Binding", each: s.binding},
		{name: "UndeclaredLengths", each: s.undeclaredLengths},
		{name: "WrongKey", each: s.wrongKey},
		{name: "WrongMechanism", each: s.wrongMechanism},
		{name: "Corrupt", run: s.corrupt},
		{name: "Missing", run: s.missing},
		{name: "NoSecretsPrinted", each: s.noSecretsPrinted},
		{name: "Refs", each: s.refs},
		{name: "Classification", each: s.classification},
		{name: "Concurrent", each: s.concurrent},
		{name: "Generator", each: s.generator},
		{name: "Preflight", each: s.preflight},
		{name: "Decorated", each: s.decorated},
		{name: "Transient", each: s.transient},
		{name: "Rewrap", each: s.rewrap},
	}
	for path, why := range b.KnownFailures {
		top, _, _ := strings.Cut(path, "/")
		if !slices.ContainsFunc(tests, func(c subtest) bool { return c.name == top }) || why == "" {
			t.Fatalf("keystest.Backend.KnownFailures[%q]: want the path of a subtest of Run, and why it fails", path)
		}
	}
	for _, c := range tests {
		if c.each != nil {
			c.run = s.each(c.name, c.each)
		}
		t.Run(c.name, c.run)
	}
}

// subtest is one of Run's: a check of each mechanism, or a test of its
// own.
type subtest struct {
	name string
	each func(t checkT, mech string, k keys.KEK)
	run  func(*testing.T)
}

func (b Backend) validate() error {
	switch {
	case len(b.Mechanisms) == 0:
		return errors.New("no Mechanisms")
	case b.Open == nil || b.Other == nil:
		return errors.New("Open and Other are required")
	case b.Missing == "":
		return errors.New("Missing is required")
	}
	scheme, _, _ := strings.Cut(b.Missing, ":")
	for i, m := range b.Mechanisms {
		if slices.Contains(b.Mechanisms[:i], m) {
			return fmt.Errorf("mechanism %q listed twice", m)
		}
		if owner := keys.MechanismScheme(m); owner != scheme {
			return fmt.Errorf("mechanism %q is registered by scheme %q, not by %q (the scheme of Missing); is the backend's package imported?", m, owner, scheme)
		}
		if b.SecretLens != nil {
			for _, n := range b.SecretLens(m) {
				if n < keys.MinSecret || n > keys.MaxSecret {
					return fmt.Errorf("SecretLens(%q) has %d: secrets are %d to %d bytes", m, n, keys.MinSecret, keys.MaxSecret)
				}
			}
		}
	}
	return nil
}

type suite struct {
	b           Backend
	open, other map[string]keys.KEK
	needles     []needle // of Backend.Secrets
}

// checkT is what the checks use of a *testing.T; a known failure runs them
// against a recorder instead.
type checkT interface {
	Helper()
	Context() context.Context
	Name() string
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// each runs f for every mechanism, as subtests name/<mechanism>.
func (s *suite) each(name string, f func(t checkT, mech string, k keys.KEK)) func(*testing.T) {
	return func(t *testing.T) {
		for _, m := range s.b.Mechanisms {
			s.sub(t, name+"/"+m, func(t checkT) { f(t, m, s.open[m]) })
		}
	}
}

// sub runs f as the subtest at path (below Run), the last element of
// which names it; a known failure is run against a recorder.
func (s *suite) sub(t *testing.T, path string, f func(t checkT)) {
	t.Run(path[strings.LastIndex(path, "/")+1:], func(t *testing.T) {
		why, known := s.b.KnownFailures[path]
		if !known {
			f(t)
			return
		}
		r := &recorder{t: t}
		done := make(chan struct{})
		go func() { // Fatalf ends this goroutine, not the test's
			defer close(done)
			f(r)
		}()
		<-done
		switch {
		case len(r.errs) > 0:
			t.Logf("known failure (%s) still fails:\n%s", why, strings.Join(r.errs, "\n"))
		case r.skip != "":
			t.Skip(r.skip)
		default:
			t.Errorf("%s passes now: remove it from Backend.KnownFailures (it was: %s)", path, why)
		}
	})
}

// recorder is a checkT that keeps failures instead of reporting them.
type recorder struct {
	t    *testing.T
	mu   sync.Mutex
	errs []string
	skip string
}

func (r *recorder) Helper()                  {}
func (r *recorder) Context() context.Context { return r.t.Context() }
func (r *recorder) Name() string             { return r.t.Name() }
func (r *recorder) Logf(f string, a ...any)  { r.t.Logf(f, a...) }
func (r *recorder) Errorf(f string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(f, a...))
}
func (r *recorder) Fatalf(f string, a ...any) { r.Errorf(f, a...); runtime.Goexit() }
func (r *recorder) Skipf(f string, a ...any) {
	r.mu.Lock()
	r.skip = fmt.Sprintf(f, a...)
	r.mu.Unlock()
	runtime.Goexit()
}

// testingT is the *testing.T under t, for the Backend's functions.
func testingT(t checkT) *testing.T {
	if r, ok := t.(*recorder); ok {
		return r.t
	}
	return t.(*testing.T)
}

func (s *suite) binds(mech string) bool { return s.b.Binds != nil && s.b.Binds(mech) }

// lens are the secret lengths mech takes.
func (s *suite) lens(mech string) []int {
	if s.b.SecretLens != nil {
		if l := s.b.SecretLens(mech); len(l) > 0 {
			return l
		}
	}
	var all []int
	for n := keys.MinSecret; n <= keys.MaxSecret; n++ {
		all = append(all, n)
	}
	return all
}

// typical is the length most tests use: a DEK's, when mech takes it.
func (s *suite) typical(mech string) int {
	l := s.lens(mech)
	if slices.Contains(l, keys.DEKSize) {
		return keys.DEKSize
	}
	return l[len(l)/2]
}

// enough counts a failure of a loop over lengths and reports, at the
// third, that the loop stops: one broken mechanism should not print a
// page per length.
func enough(t checkT, fails *int) bool {
	t.Helper()
	if *fails++; *fails < 3 {
		return false
	}
	t.Errorf("(3 lengths failed; the others are not tried)")
	return true
}

// random is a reproducible source for a test: its secrets differ from
// every other test's, so a leaked one is unambiguous.
func random(name string) *rand.ChaCha8 {
	return rand.NewChaCha8(sha256.Sum256([]byte("keystest\x00" + name)))
}

func newDEK(r *rand.ChaCha8, n int) *keys.DEK {
	b := make([]byte, n)
	_, _ = r.Read(b)
	defer clear(b)
	d, err := keys.NewDEK(b)
	if err != nil {
		panic(err) // n was validated
	}
	return d
}

// panicked is a panic of a backend call, turned into an error so that one
// bad input fails one check rather than the test binary.
type panicked struct {
	v     any
	stack []byte
}

func (p panicked) Error() string {
	lines := strings.SplitAfter(string(p.stack), "\n")
	return fmt.Sprintf("panic: %v\n%s", p.v, strings.Join(lines[:min(len(lines), 16)], ""))
}

func wrap(t checkT, k keys.KEK, b keys.Binding, d *keys.DEK) (w []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			w, err = nil, panicked{r, debug.Stack()}
		}
	}()
	w, err = k.Wrap(t.Context(), b, d)
	if err == nil && len(w) == 0 {
		err = errors.New("keystest: Wrap returned no wrapped key and no error")
	}
	return w, err
}

func unwrap(t checkT, k keys.KEK, b keys.Binding, mech string, w []byte) (d *keys.DEK, err error) {
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, panicked{r, debug.Stack()}
		}
	}()
	d, err = k.Unwrap(t.Context(), b, mech, w)
	switch {
	case err == nil && d == nil:
		err = errors.New("keystest: Unwrap returned no key and no error")
	case err != nil && d != nil:
		err = fmt.Errorf("keystest: Unwrap returned a key and an error: %w", err)
		d = nil
	}
	return d, err
}

// roundTrip wraps and unwraps a secret, reporting failures as what; it
// returns whether the secret came back.
func (s *suite) roundTrip1(t checkT, what string, k, back keys.KEK, b, ub keys.Binding, d *keys.DEK) bool {
	t.Helper()
	want := bytes.Clone(d.Bytes())
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Errorf("%s: Wrap: %v", what, s.scrub(err.Error(), want))
		return false
	}
	if !bytes.Equal(d.Bytes(), want) {
		t.Errorf("%s: Wrap changed the DEK it was given", what)
	}
	if len(w) > schemas.MaxWrappedDEK {
		t.Errorf("%s: wrapped key is %d bytes; DEK tables cap it at %d", what, len(w), schemas.MaxWrappedDEK)
	}
	if s.leaks(string(w), want) {
		t.Errorf("%s: the wrapped key contains the secret in clear", what)
	}
	got, err := unwrap(t, back, ub, k.Mechanism(), w)
	if err != nil {
		t.Errorf("%s: Unwrap: %v", what, s.scrub(err.Error(), want))
		return false
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("%s: Unwrap returned a different secret (%d bytes, want %d)", what, got.Len(), len(want))
		return false
	}
	clear(w)
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("%s: the unwrapped DEK shares memory with the wrapped key", what)
	}
	return true
}

func (s *suite) roundTrip(t checkT, mech string, k keys.KEK) {
	r := random(t.Name())
	fails := 0
	for _, n := range s.lens(mech) {
		d := newDEK(r, n)
		b := keys.ByID(fmt.Sprintf("keystest-rt-%d", n))
		if !s.roundTrip1(t, fmt.Sprintf("%d-byte secret", n), k, k, b, b, d) && enough(t, &fails) {
			return
		}
		d.Zero()
	}
}

func (s *suite) unbound(t checkT, mech string, k keys.KEK) {
	d := newDEK(random(t.Name()), s.typical(mech))
	defer d.Zero()
	s.roundTrip1(t, "zero Binding", k, k, keys.Binding{}, keys.Binding{}, d)
}

// edit returns a deep copy of b changed by f.
func edit(b keys.Binding, f func(*keys.Binding)) keys.Binding {
	c := keys.Binding{DEKID: b.DEKID, AAD: slices.Clone(b.AAD)}
	if b.Context != nil {
		c.Context = map[string]string{}
		for k, v := range b.Context {
			c.Context[k] = v
		}
	}
	f(&c)
	return c
}

func (s *suite) binding(t checkT, mech string, k keys.KEK) {
	r := random(t.Name())
	full := keys.Binding{DEKID: "keystest-b1", Context: map[string]string{"tenant": "42", "purpose": "keystest"}, AAD: []string{"a", "b"}}
	if !s.binds(mech) {
		// Declared unbound: the binding must not matter, or callers that
		// trust the declaration (and check a KCV instead) fail records.
		d := newDEK(r, s.typical(mech))
		defer d.Zero()
		s.roundTrip1(t, "unbinding mechanism, unwrapped with another dek_id", k, k, full, keys.ByID("keystest-b2"), d)
		s.roundTrip1(t, "unbinding mechanism, unwrapped unbound", k, k, full, keys.Binding{}, d)
		return
	}
	for _, c := range []struct {
		name   string
		wrap   keys.Binding
		unwrap keys.Binding
	}{
		{"dek_id changed", keys.ByID("d-1"), keys.ByID("d-2")},
		{"dek_id extended", keys.ByID("d-1"), keys.ByID("d-10")},
		{"dek_id case", keys.ByID("d-1"), keys.ByID("D-1")},
		{"dek_id dropped", keys.ByID("d-1"), keys.Binding{}},
		{"dek_id added", keys.Binding{}, keys.ByID("d-1")},
		{"dek_id changed beside context", full, edit(full, func(b *keys.Binding) { b.DEKID = "keystest-b2" })},
		{"dek_id dropped beside context", full, edit(full, func(b *keys.Binding) { b.DEKID = "" })},
		{"context value changed", full, edit(full, func(b *keys.Binding) { b.Context["tenant"] = "43" })},
		{"context key renamed", full, edit(full, func(b *keys.Binding) { delete(b.Context, "tenant"); b.Context["tenant2"] = "42" })},
		{"context entry added", full, edit(full, func(b *keys.Binding) { b.Context["extra"] = "" })},
		{"context entry dropped", full, edit(full, func(b *keys.Binding) { delete(b.Context, "purpose") })},
		{"context dropped", full, edit(full, func(b *keys.Binding) { b.Context = nil })},
		{"aad element changed", full, edit(full, func(b *keys.Binding) { b.AAD[1] = "c" })},
		{"aad reordered", full, edit(full, func(b *keys.Binding) { b.AAD[0], b.AAD[1] = b.AAD[1], b.AAD[0] })},
		{"aad empty element added", full, edit(full, func(b *keys.Binding) { b.AAD = append(b.AAD, "") })},
		{"aad dropped", full, edit(full, func(b *keys.Binding) { b.AAD = nil })},
		{"everything dropped", full, keys.Binding{}},
		// Encodings must not let one binding pass for another.
		{"aad split elsewhere", keys.Binding{AAD: []string{"a", "bc"}}, keys.Binding{AAD: []string{"ab", "c"}}},
		{"context split elsewhere", keys.Binding{Context: map[string]string{"a": "b=c"}}, keys.Binding{Context: map[string]string{"a=b": "c"}}},
		{"dek_id as aad", keys.ByID("x"), keys.Binding{AAD: []string{"x"}}},
		{"dek_id as context", keys.ByID("x"), keys.Binding{Context: map[string]string{"dek_id": "x"}}},
		{"context as aad", keys.Binding{Context: map[string]string{"k": "v"}}, keys.Binding{AAD: []string{"k", "v"}}},
	} {
		d := newDEK(r, s.typical(mech))
		want := bytes.Clone(d.Bytes())
		w, err := wrap(t, k, c.wrap, d)
		if err != nil {
			t.Errorf("%s: Wrap bound to %s: %v", c.name, c.wrap, s.scrub(err.Error(), want))
			continue
		}
		if got, err := unwrap(t, k, c.wrap, mech, w); err != nil || !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: Unwrap with the binding it was wrapped to (%s) failed: %v", c.name, c.wrap, err)
			continue
		}
		got, err := unwrap(t, k, c.unwrap, mech, w)
		s.refused(t, fmt.Sprintf("%s: wrapped to %s, unwrapped as %s", c.name, c.wrap, c.unwrap), got, err, want, keys.ErrUnwrapFailed)
		d.Zero()
	}
}

// undeclaredLengths: a wrap that succeeds must unwrap, or the DEK table
// written with it is lost.
func (s *suite) undeclaredLengths(t checkT, mech string, k keys.KEK) {
	r := random(t.Name())
	lens := s.lens(mech)
	tried := 0
	for n := keys.MinSecret; n <= keys.MaxSecret; n++ {
		if slices.Contains(lens, n) {
			continue
		}
		tried++
		d := newDEK(r, n)
		want := bytes.Clone(d.Bytes())
		b := keys.ByID(fmt.Sprintf("keystest-len-%d", n))
		w, err := wrap(t, k, b, d)
		if err != nil {
			if errors.As(err, &panicked{}) {
				t.Errorf("Wrap of an undeclared %d-byte secret panicked: %v", n, err)
			} else if keys.IsRetryable(err) {
				t.Errorf("Wrap of an undeclared %d-byte secret: error is marked retryable, but the length will not change: %v", n, s.scrub(err.Error(), want))
			}
			s.clean(t, fmt.Sprintf("Wrap of an undeclared %d-byte secret", n), err.Error(), want)
			continue
		}
		got, err := unwrap(t, k, b, mech, w)
		switch {
		case err != nil:
			t.Errorf("Wrap took a %d-byte secret that Unwrap refuses (data wrapped so would be lost): %v", n, s.scrub(err.Error(), want))
		case !bytes.Equal(got.Bytes(), want):
			t.Errorf("Wrap took a %d-byte secret that Unwrap returns changed (%d bytes)", n, got.Len())
		default:
			t.Logf("%s also round-trips %d-byte secrets (SecretLens does not declare it)", mech, n)
		}
		d.Zero()
	}
	if tried == 0 {
		t.Skipf("%s takes every length from %d to %d", mech, keys.MinSecret, keys.MaxSecret)
	}
}

func (s *suite) wrongKey(t checkT, mech string, k keys.KEK) {
	o := s.other[mech]
	r := random(t.Name())
	for _, p := range []struct{ from, to keys.KEK }{{k, o}, {o, k}} {
		d := newDEK(r, s.typical(mech))
		want := bytes.Clone(d.Bytes())
		b := keys.ByID("keystest-wk")
		w, err := wrap(t, p.from, b, d)
		if err != nil {
			t.Fatalf("Wrap with %s: %v", p.from.URI(), s.scrub(err.Error(), want))
		}
		got, err := unwrap(t, p.to, b, mech, w)
		s.refused(t, fmt.Sprintf("wrapped by %s, unwrapped by %s", p.from.URI(), p.to.URI()), got, err, want, keys.ErrUnwrapFailed)
		d.Zero()
	}
}

func (s *suite) wrongMechanism(t checkT, mech string, k keys.KEK) {
	d := newDEK(random(t.Name()), s.typical(mech))
	defer d.Zero()
	want := bytes.Clone(d.Bytes())
	b := keys.ByID("keystest-wm")
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Fatalf("Wrap: %v", s.scrub(err.Error(), want))
	}
	for _, m := range append(slices.Clone(s.b.Mechanisms), noSuchMechanism) {
		if m == mech {
			continue
		}
		got, err := unwrap(t, k, b, m, w)
		if err == nil && bytes.Equal(got.Bytes(), want) {
			t.Logf("a %s wrapped key also unwraps as %s (same format)", mech, m)
			continue
		}
		kinds := []error{keys.ErrUnwrapFailed, keys.ErrMechanism}
		if m == noSuchMechanism {
			kinds = kinds[1:]
		}
		s.refused(t, fmt.Sprintf("%s wrapped key unwrapped as %s", mech, m), got, err, want, kinds...)
	}
}

func flip(w []byte, i int) []byte {
	c := bytes.Clone(w)
	c[i] ^= 0x01
	return c
}

func (s *suite) corrupt(t *testing.T) {
	for _, mech := range s.b.Mechanisms {
		t.Run(mech, func(t *testing.T) { s.corrupt1(t, mech, s.open[mech]) })
	}
}

func (s *suite) corrupt1(t *testing.T, mech string, k keys.KEK) {
	r := random(t.Name())
	d := newDEK(r, s.typical(mech))
	defer d.Zero()
	want := bytes.Clone(d.Bytes())
	b := keys.ByID("keystest-bad")
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Fatalf("Wrap: %v", s.scrub(err.Error(), want))
	}
	noise := func(n int) []byte { x := make([]byte, n); _, _ = r.Read(x); return x }
	n := len(w)
	for _, c := range []struct {
		name string
		blob []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"one-byte", w[:1:1]},
		{"truncated-by-one", w[: n-1 : n-1]},
		{"truncated-to-half", w[: n/2 : n/2]},
		{"extended-by-one", append(bytes.Clone(w), 0)},
		{"extended-by-16", append(bytes.Clone(w), make([]byte, 16)...)},
		{"first-bit-flipped", flip(w, 0)},
		{"middle-bit-flipped", flip(w, n/2)},
		{"last-bit-flipped", flip(w, n-1)},
		{"all-zero", make([]byte, n)},
		{"all-ones", bytes.Repeat([]byte{0xff}, n)},
		{"noise", noise(n)},
		{"4097-bytes", noise(schemas.MaxWrappedDEK + 1)},
		{"itself-and-4096-bytes", append(bytes.Clone(w), noise(schemas.MaxWrappedDEK)...)},
		{"1MiB", noise(1 << 20)},
	} {
		s.sub(t, "Corrupt/"+mech+"/"+c.name, func(t checkT) {
			got, err := unwrap(t, k, b, mech, c.blob)
			s.refused(t, c.name, got, err, want, keys.ErrUnwrapFailed)
		})
	}
}

func (s *suite) missing(t *testing.T) {
	ref, err := keys.ParseRef(s.b.Missing)
	if err != nil {
		t.Fatalf("ParseRef(Missing): %v", err)
	}
	open := func(t checkT, m string) (keys.KEK, string, error) {
		k, err := keys.Open(t.Context(), s.b.Missing, keys.Options{Wrap: m})
		what := fmt.Sprintf("Open of a missing key (wrap %q)", m)
		if err == nil {
			t.Fatalf("%s succeeded: %s", what, k.URI())
		}
		return k, what, err
	}
	mechs := append([]string{""}, s.b.Mechanisms...)
	s.sub(t, "Missing/NotFound", func(t checkT) {
		for _, m := range mechs {
			_, what, err := open(t, m)
			if !errors.Is(err, keys.ErrKeyNotFound) {
				t.Errorf("%s: got %v, want ErrKeyNotFound", what, s.scrub(err.Error()))
			}
			if !keys.IsFatal(err) || keys.IsRetryable(err) {
				t.Errorf("%s: IsFatal %v, IsRetryable %v; want a fatal, permanent error (a run cannot start without its key)", what, keys.IsFatal(err), keys.IsRetryable(err))
			}
			if !strings.Contains(err.Error(), ref.Redacted) {
				t.Errorf("%s: error %q does not name the key (%s)", what, s.scrub(err.Error()), ref.Redacted)
			}
			s.clean(t, what, err.Error())
		}
	})
	// A typed nil in a keys.KEK is not nil: a caller that looks at the
	// KEK before the error (a deferred close, a log line) would crash.
	s.sub(t, "Missing/NilKEK", func(t checkT) {
		for _, m := range mechs {
			if k, what, _ := open(t, m); k != nil {
				t.Errorf("%s returned a non-nil keys.KEK (%T) with its error", what, k)
			}
		}
	})
}

func (s *suite) noSecretsPrinted(t checkT, mech string, k keys.KEK) {
	r := random(t.Name())
	for _, n := range s.lens(mech) {
		d := newDEK(r, n)
		b := keys.ByID("keystest-print")
		printed := []string{
			fmt.Sprintf("%v %+v %#v %s %x %X %q %d %08b", d, d, d, d, d, d, d, d, d),
			fmt.Sprint(d), fmt.Sprintln(d), d.String(), d.GoString(),
			fmt.Sprintf("%v %+v %#v %x", []*keys.DEK{d}, struct{ DEK *keys.DEK }{d}, map[string]*keys.DEK{"k": d}, []any{d}),
		}
		if w, err := wrap(t, k, b, d); err == nil {
			if u, err := unwrap(t, k, b, mech, w); err == nil {
				printed = append(printed, fmt.Sprintf("%v %+v %#v %s %x", u, u, u, u, u))
				u.Zero()
			}
		}
		for _, p := range printed {
			s.clean(t, fmt.Sprintf("a printed %d-byte DEK", n), p, d.Bytes())
		}
		d.Zero()
	}
	for _, kk := range []keys.KEK{k, keys.WithRetry(keys.WithRate(k, 1000), keys.RetryPolicy{})} {
		s.clean(t, "the printed KEK", fmt.Sprintf("%v %+v %#v %s", kk, kk, kk, kk.URI()))
	}
}

func (s *suite) refs(t checkT, mech string, k keys.KEK) {
	o := s.other[mech]
	scheme, _, _ := strings.Cut(s.b.Missing, ":")
	parsed := map[string]keys.Ref{}
	for _, u := range []string{k.URI(), o.URI(), s.b.Missing} {
		r, err := keys.ParseRef(u)
		if err != nil {
			t.Errorf("ParseRef(%s): %v", keys.Redact(u), err)
			continue
		}
		parsed[u] = r
		if r.Scheme != scheme {
			t.Errorf("ParseRef(%s).Scheme = %q, want %q", keys.Redact(u), r.Scheme, scheme)
		}
		if r.Custodian == "" {
			t.Errorf("ParseRef(%s) names no custodian", keys.Redact(u))
		}
		for form, v := range map[string]string{"Canonical": r.Canonical, "Redacted": r.Redacted} {
			if v == "" || strings.ContainsAny(v, "?#") {
				t.Errorf("ParseRef(%s).%s = %q: want a reference without query or fragment", keys.Redact(u), form, v)
			}
			for _, p := range s.b.Private {
				if p != "" && strings.Contains(v, p) {
					t.Errorf("ParseRef(%s).%s = %q contains %q", keys.Redact(u), form, v, p)
				}
			}
			s.clean(t, "ParseRef(...)."+form, v)
		}
		if got := keys.Redact(u); got != r.Redacted {
			t.Errorf("keys.Redact = %q, ParseRef(...).Redacted = %q", got, r.Redacted)
		}
		for _, p := range [][2]string{{r.Canonical, u}, {u, r.Canonical}} {
			if same, err := keys.SameRef(p[0], p[1]); !same || err != nil {
				t.Errorf("SameRef(%s, %s) = %v, %v; want true", keys.Redact(p[0]), keys.Redact(p[1]), same, err)
			}
		}
		if again, err := keys.ParseRef(r.Canonical); err != nil || again.Canonical != r.Canonical {
			t.Errorf("ParseRef(%q) = %q, %v: the canonical form is not canonical", r.Canonical, again.Canonical, err)
		}
	}
	// What DEK tables record is the canonical form.
	for _, kk := range []keys.KEK{k, o} {
		if r, ok := parsed[kk.URI()]; ok && r.Canonical != kk.URI() {
			t.Errorf("URI() = %q is not its canonical form %q", kk.URI(), r.Canonical)
		}
		s.clean(t, "URI()", kk.URI())
	}
	for _, p := range [][2]string{{k.URI(), o.URI()}, {o.URI(), k.URI()}, {s.b.Missing, k.URI()}} {
		if same, err := keys.SameRef(p[0], p[1]); same || err != nil {
			t.Errorf("SameRef(%s, %s) = %v, %v; want false (different keys)", keys.Redact(p[0]), keys.Redact(p[1]), same, err)
		}
	}
	if !keys.Matches(k, k.URI()) || keys.Matches(k, o.URI()) || keys.Matches(k, s.b.Missing) {
		t.Errorf("keys.Matches: own URI %v, Other's %v, Missing %v; want true, false, false",
			keys.Matches(k, k.URI()), keys.Matches(k, o.URI()), keys.Matches(k, s.b.Missing))
	}
	rk, ro, rm := parsed[k.URI()], parsed[o.URI()], parsed[s.b.Missing]
	if rk.Custodian != ro.Custodian || rk.Custodian != rm.Custodian {
		t.Errorf("custodians of Open, Other and Missing differ: %q, %q, %q (they are on one custodian)", rk.Custodian, ro.Custodian, rm.Custodian)
	}
	if ck, co := keys.Custodian(k), keys.Custodian(o); ck == "" || ck != co {
		t.Errorf("keys.Custodian of Open and Other: %q, %q; want one non-empty name (rate limits are shared per custodian)", ck, co)
	}
}

// classification states the retry classes the runner acts on: a bad input
// fails its record for good, a missing key stops the run.
func (s *suite) classification(t checkT, mech string, k keys.KEK) {
	d := newDEK(random(t.Name()), s.typical(mech))
	defer d.Zero()
	b := keys.ByID("keystest-class")
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Fatalf("Wrap: %v", s.scrub(err.Error(), d.Bytes()))
	}
	_, wrongKey := unwrap(t, s.other[mech], b, mech, w)
	_, badBlob := unwrap(t, k, b, mech, flip(w, len(w)/2))
	for what, err := range map[string]error{"wrong key": wrongKey, "bad blob": badBlob} {
		if err == nil {
			t.Errorf("%s: no error", what)
			continue
		}
		if keys.IsRetryable(err) || keys.IsFatal(err) {
			t.Errorf("%s: IsRetryable %v, IsFatal %v; want neither (it fails one record): %v", what, keys.IsRetryable(err), keys.IsFatal(err), s.scrub(err.Error(), d.Bytes()))
		}
	}
	_, err = keys.Open(t.Context(), s.b.Missing, keys.Options{Wrap: mech})
	if !errors.Is(err, keys.ErrKeyNotFound) || !keys.IsFatal(err) || keys.IsRetryable(err) {
		t.Errorf("missing key: %v: want ErrKeyNotFound, fatal, not retryable", err)
	}
}

func (s *suite) concurrent(t checkT, mech string, k keys.KEK) {
	const goroutines, rounds = 16, 50
	lens := s.lens(mech)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			src := random(fmt.Sprintf("%s/%d", t.Name(), g))
			r := rand.New(src)
			for i := range rounds {
				d := newDEK(src, lens[r.IntN(len(lens))])
				want := bytes.Clone(d.Bytes())
				b := keys.ByID(fmt.Sprintf("keystest-c%d-%d", g, i))
				w, err := wrap(t, k, b, d)
				if err != nil {
					t.Errorf("goroutine %d, round %d: Wrap: %v", g, i, s.scrub(err.Error(), want))
					return
				}
				// Failures interleaved with successes: a failed operation
				// must not leave shared state (a session) unusable.
				switch {
				case i%7 == 3:
					got, err := unwrap(t, k, b, mech, flip(w, r.IntN(len(w))))
					if !s.refused(t, fmt.Sprintf("goroutine %d, round %d: flipped bit", g, i), got, err, want, keys.ErrUnwrapFailed) {
						return
					}
				case i%7 == 5 && s.binds(mech):
					got, err := unwrap(t, k, keys.ByID("keystest-elsewhere"), mech, w)
					if !s.refused(t, fmt.Sprintf("goroutine %d, round %d: other dek_id", g, i), got, err, want, keys.ErrUnwrapFailed) {
						return
					}
				}
				got, err := unwrap(t, k, b, mech, w)
				if err != nil {
					t.Errorf("goroutine %d, round %d: Unwrap: %v", g, i, s.scrub(err.Error(), want))
					return
				}
				if !bytes.Equal(got.Bytes(), want) {
					t.Errorf("goroutine %d, round %d: Unwrap returned another goroutine's or a wrong secret", g, i)
					return
				}
				got.Zero()
				d.Zero()
			}
		})
	}
	wg.Wait()
}

func (s *suite) generator(t checkT, mech string, k keys.KEK) {
	if !keys.CanGenerate(k) {
		t.Skipf("%T has no random generator (keys.CanGenerate is false)", keys.Base(k))
	}
	seen := map[string]bool{}
	for i := range 16 {
		d, err := keys.Generate(t.Context(), k)
		if err != nil {
			t.Fatalf("Generate: %v", s.scrub(err.Error()))
		}
		if d.Len() != keys.DEKSize {
			t.Fatalf("Generate returned a %d-byte DEK, want %d", d.Len(), keys.DEKSize)
		}
		if seen[string(d.Bytes())] || bytes.Equal(d.Bytes(), make([]byte, keys.DEKSize)) {
			t.Fatalf("Generate returned a repeated or all-zero DEK after %d calls", i)
		}
		seen[string(d.Bytes())] = true
		if i < 3 {
			s.roundTrip1(t, "generated DEK", k, k, keys.ByID("keystest-gen"), keys.ByID("keystest-gen"), d)
		}
		d.Zero()
	}
}

func (s *suite) preflight(t checkT, mech string, k keys.KEK) {
	checks, ok := keys.Preflight(t.Context(), k, true, true)
	if !ok {
		t.Skipf("%T has no preflight (not a keys.Preflighter)", keys.Base(k))
	}
	if len(checks) == 0 {
		t.Fatalf("Preflight of a usable key returned no checks")
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("Preflight of a usable key: check %q failed: %s", c.Name, s.scrub(c.Info))
		}
		s.clean(t, "a preflight check", c.Name+" "+c.Info)
	}
}

// decorated runs a round trip through the decorators the pipeline puts
// around every KEK, and checks they pass optional abilities on honestly.
func (s *suite) decorated(t checkT, mech string, k keys.KEK) {
	dk := keys.WithRetry(keys.WithRate(k, 1000), keys.RetryPolicy{})
	if dk.URI() != k.URI() || dk.Mechanism() != k.Mechanism() {
		t.Errorf("decorated KEK: URI %q, mechanism %q; want %q, %q", dk.URI(), dk.Mechanism(), k.URI(), k.Mechanism())
	}
	if keys.Custodian(dk) != keys.Custodian(k) || !keys.Matches(dk, k.URI()) {
		t.Errorf("decorated KEK: custodian %q (want %q), matches its own URI: %v", keys.Custodian(dk), keys.Custodian(k), keys.Matches(dk, k.URI()))
	}
	r := random(t.Name())
	fails := 0
	for _, n := range s.lens(mech) {
		d := newDEK(r, n)
		b := keys.ByID(fmt.Sprintf("keystest-dec-%d", n))
		ok := s.roundTrip1(t, fmt.Sprintf("%d-byte secret, decorated both ways", n), dk, dk, b, b, d)
		ok = s.roundTrip1(t, fmt.Sprintf("%d-byte secret, wrapped decorated", n), dk, k, b, b, d) && ok
		ok = s.roundTrip1(t, fmt.Sprintf("%d-byte secret, unwrapped decorated", n), k, dk, b, b, d) && ok
		d.Zero()
		if !ok && enough(t, &fails) {
			return
		}
	}
	d := newDEK(r, s.typical(mech))
	defer d.Zero()
	if w, err := wrap(t, dk, keys.ByID("keystest-dec"), d); err == nil {
		got, err := unwrap(t, dk, keys.ByID("keystest-dec"), mech, flip(w, len(w)-1))
		s.refused(t, "decorated, flipped bit", got, err, d.Bytes(), keys.ErrUnwrapFailed)
	}
	if cg, dg := keys.CanGenerate(k), keys.CanGenerate(dk); cg != dg {
		t.Errorf("keys.CanGenerate: %v undecorated, %v decorated", cg, dg)
	}
	g, err := keys.Generate(t.Context(), dk)
	switch {
	case keys.CanGenerate(k) && err != nil:
		t.Errorf("Generate through the decorators: %v", s.scrub(err.Error()))
	case keys.CanGenerate(k):
		if g.Len() != keys.DEKSize {
			t.Errorf("Generate through the decorators returned %d bytes", g.Len())
		}
		s.roundTrip1(t, "DEK generated through the decorators", dk, k, keys.ByID("keystest-dec-gen"), keys.ByID("keystest-dec-gen"), g)
		g.Zero()
	case err == nil:
		t.Errorf("Generate through the decorators invented a generator the key does not have")
	case !errors.Is(err, keys.ErrMechanism):
		t.Errorf("Generate through the decorators without a generator: %v, want ErrMechanism", err)
	}
	_, pk := keys.Preflight(t.Context(), k, false, false)
	_, pd := keys.Preflight(t.Context(), dk, false, false)
	if pk != pd {
		t.Errorf("keys.Preflight available: %v undecorated, %v decorated", pk, pd)
	}
	o := s.other[mech]
	if a, b := keys.CanRewrap(k, o, mech), keys.CanRewrap(dk, keys.WithRate(o, 1000), mech); a != b {
		t.Errorf("keys.CanRewrap to Other: %v undecorated, %v decorated", a, b)
	}
}

func (s *suite) transient(t checkT, mech string, k keys.KEK) {
	if s.b.Transient == nil {
		t.Skipf("Backend.Transient is not set")
	}
	d := newDEK(random(t.Name()), s.typical(mech))
	defer d.Zero()
	want := bytes.Clone(d.Bytes())
	b := keys.ByID("keystest-transient")
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Fatalf("Wrap: %v", s.scrub(err.Error(), want))
	}
	tk := s.b.Transient(testingT(t), mech)
	_, err = unwrap(t, tk, b, mech, w)
	switch {
	case err == nil:
		t.Errorf("Transient's KEK did not fail its first Unwrap")
	case !keys.IsRetryable(err):
		t.Errorf("a transient failure is not retryable (runners would fail the record for good): %v", s.scrub(err.Error(), want))
	case errors.Is(err, keys.ErrUnwrapFailed):
		t.Errorf("a transient failure reads as a bad wrapped key: %v", s.scrub(err.Error(), want))
	}
	if err != nil {
		s.clean(t, "a transient failure", err.Error(), want)
	}
	if got, err := unwrap(t, tk, b, mech, w); err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Errorf("Unwrap after a transient failure: %v (the failure left the KEK unusable?)", err)
	}
	retried := keys.WithRetry(s.b.Transient(testingT(t), mech), keys.RetryPolicy{Attempts: 3, Base: time.Millisecond})
	if got, err := unwrap(t, retried, b, mech, w); err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Errorf("Unwrap through WithRetry over a transient failure: %v", err)
	}
}

// refused checks that an operation was refused with one of want, for good,
// without a key and without a secret in its error; secret is the DEK the
// input was made from. It reports whether all held.
func (s *suite) refused(t checkT, what string, got *keys.DEK, err error, secret []byte, want ...error) bool {
	t.Helper()
	if err == nil {
		if bytes.Equal(got.Bytes(), secret) {
			t.Errorf("%s: accepted (Unwrap returned the original secret)", what)
		} else {
			t.Errorf("%s: accepted, and Unwrap returned a different secret without an error", what)
		}
		got.Zero()
		return false
	}
	ok := true
	if errors.As(err, &panicked{}) {
		t.Errorf("%s: %v", what, err)
		return false
	}
	if !slices.ContainsFunc(want, func(w error) bool { return errors.Is(err, w) }) {
		t.Errorf("%s: got %v, want %v", what, s.scrub(err.Error(), secret), want)
		ok = false
	}
	if keys.IsRetryable(err) {
		t.Errorf("%s: error is marked retryable, but retrying the same input cannot succeed: %v", what, s.scrub(err.Error(), secret))
		ok = false
	}
	if errors.Is(err, keys.ErrUnwrapFailed) && keys.IsFatal(err) {
		t.Errorf("%s: a bad wrapped key is fatal: it must fail its record, not the run: %v", what, s.scrub(err.Error(), secret))
		ok = false
	}
	return s.clean(t, what, err.Error(), secret) && ok
}

// needle is one form of a secret to look for in text.
type needle struct{ s, form string }

// window is how many consecutive bytes of a DEK count as a leak: short
// enough to catch a truncated print, long enough not to occur by chance in
// random bytes. Backend secrets (PINs, API keys) are text that may share
// words with messages, so only their whole value counts.
const window = 8

// needlesOf lists the forms of secrets to look for: the whole of each and,
// when win > 0, every run of win bytes.
func needlesOf(win int, secrets ...[]byte) []needle {
	var out []needle
	add := func(part []byte) {
		dec := fmt.Sprint(part)
		out = append(out,
			needle{string(part), "raw bytes"},
			needle{hex.EncodeToString(part), "hex"},
			needle{strings.ToUpper(hex.EncodeToString(part)), "hex"},
			needle{dec[1 : len(dec)-1], "decimal bytes"})
	}
	for _, sec := range secrets {
		if len(sec) == 0 {
			continue
		}
		add(sec)
		for j := 0; win > 0 && j+win <= len(sec); j++ {
			add(sec[j : j+win])
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			out = append(out, needle{enc.EncodeToString(sec), "base64"})
		}
	}
	return out
}

func found(ns []needle, text string) []needle {
	var hits []needle
	for _, n := range ns {
		if strings.Contains(text, n.s) {
			hits = append(hits, n)
		}
	}
	return hits
}

// leaks reports whether text holds one of the backend's secrets or a DEK
// of extra.
func (s *suite) leaks(text string, extra ...[]byte) bool {
	return len(found(s.needles, text)) > 0 || len(found(needlesOf(window, extra...), text)) > 0
}

// clean reports whether text is free of secrets (the backend's, and the
// DEKs of extra); it fails t otherwise, printing text with the secrets cut
// out.
func (s *suite) clean(t checkT, what, text string, extra ...[]byte) bool {
	t.Helper()
	if h := found(s.needles, text); len(h) > 0 {
		t.Errorf("%s contains a backend secret (Backend.Secrets) as %s: %q", what, h[0].form, s.scrub(text, extra...))
		return false
	}
	if h := found(needlesOf(window, extra...), text); len(h) > 0 {
		t.Errorf("%s contains the DEK as %s: %q", what, h[0].form, s.scrub(text, extra...))
		return false
	}
	return true
}

// scrub replaces every byte of text that belongs to a secret's form with
// one <SECRET> per run, so that a failure message never prints a part of
// one.
func (s *suite) scrub(text string, extra ...[]byte) string {
	mask := make([]bool, len(text))
	hit := false
	for _, n := range append(slices.Clone(s.needles), needlesOf(window, extra...)...) {
		for i := 0; ; {
			j := strings.Index(text[i:], n.s)
			if j < 0 {
				break
			}
			for k := i + j; k < i+j+len(n.s); k++ {
				mask[k] = true
			}
			hit, i = true, i+j+1
		}
	}
	if !hit {
		return text
	}
	var b strings.Builder
	for i := range len(text) {
		switch {
		case !mask[i]:
			b.WriteByte(text[i])
		case i == 0 || !mask[i-1]:
			b.WriteString("<SECRET>")
		}
	}
	return b.String()
}

// rewrap checks a custodian-side rewrap from Open to Other, when the
// custodian offers one (keys.CanRewrap): the new wrap unwraps under Other
// to the same secret, the source wrap still opens, a KCV the custodian
// says it checked is really checked, and corrupt or foreign input is
// refused rather than rewrapped.
func (s *suite) rewrap(t checkT, mech string, k keys.KEK) {
	o := s.other[mech]
	if !keys.CanRewrap(k, o, mech) {
		t.Skipf("the custodian does not rewrap %s keys from Open to Other inside", mech)
	}
	ctx := t.Context()
	d := newDEK(random(t.Name()), s.typical(mech))
	defer d.Zero()
	want := bytes.Clone(d.Bytes())
	b, nb := keys.ByID("keystest-rewrap"), keys.ByID("keystest-rewrap")
	if s.binds(mech) {
		nb = keys.Binding{DEKID: "keystest-rewrap", Context: map[string]string{"purpose": "keystest"}}
	}
	w, err := wrap(t, k, b, d)
	if err != nil {
		t.Fatalf("Wrap: %v", s.scrub(err.Error(), want))
	}
	kcv := schemas.KCV(want, b.DEKID)
	req := keys.RewrapRequest{Src: b, SrcMech: mech, Wrapped: w, Dst: keys.WithRate(o, 1000), DstB: nb, KCV: kcv}
	dk := keys.WithRetry(keys.WithRate(k, 1000), keys.RetryPolicy{Attempts: 2, Base: time.Millisecond})
	res, err := keys.Rewrap(ctx, dk, req)
	if err != nil {
		t.Fatalf("Rewrap of a %d-byte secret to Other: %v", len(want), s.scrub(err.Error(), want))
	}
	s.clean(t, "a rewrapped key", fmt.Sprintf("%x %q %+v", res.Wrapped, res.Wrapped, res), want)
	got, err := unwrap(t, o, nb, o.Mechanism(), res.Wrapped)
	switch {
	case err != nil:
		t.Errorf("Other cannot unwrap what Rewrap returned: %v", s.scrub(err.Error(), want))
	case !bytes.Equal(got.Bytes(), want):
		t.Errorf("Rewrap moved a different secret: Other unwraps %d bytes that differ from the source's", got.Len())
	}
	if back, err := unwrap(t, k, b, mech, w); err != nil || !bytes.Equal(back.Bytes(), want) {
		t.Errorf("the source wrap no longer opens after Rewrap: %v", err)
	}
	switch res.Proof {
	case "":
	case schemas.ProofKCV:
		bad := bytes.Clone(kcv)
		bad[0] ^= 1
		q := req
		q.KCV = bad
		r2, err := keys.Rewrap(ctx, dk, q)
		if err == nil || !errors.Is(err, schemas.ErrKCVMismatch) || r2.Wrapped != nil {
			t.Errorf("Rewrap says it checks the KCV, but a wrong KCV gave (%d bytes, %v); want no key and schemas.ErrKCVMismatch", len(r2.Wrapped), err)
		}
	default:
		t.Errorf("RewrapResult.Proof = %q: want schemas.ProofKCV or empty", res.Proof)
	}
	if res.KCV != nil && !bytes.Equal(res.KCV, kcv) {
		t.Errorf("RewrapResult.KCV differs from schemas.KCV of the secret")
	}
	for _, c := range []struct {
		what string
		q    keys.RewrapRequest
	}{
		{"flipped bit", keys.RewrapRequest{Src: b, SrcMech: mech, Wrapped: flip(w, len(w)-1), Dst: o, DstB: nb}},
		{"truncated", keys.RewrapRequest{Src: b, SrcMech: mech, Wrapped: w[:len(w)/2], Dst: o, DstB: nb}},
		{"empty", keys.RewrapRequest{Src: b, SrcMech: mech, Dst: o, DstB: nb}},
	} {
		r2, err := keys.Rewrap(ctx, k, c.q)
		if err == nil {
			t.Errorf("Rewrap of a %s wrapped key succeeded (%d bytes): want it refused", c.what, len(r2.Wrapped))
			continue
		}
		if errors.Is(err, keys.ErrNoRewrap) {
			continue // the caller unwraps itself, and that refuses it
		}
		if keys.IsRetryable(err) {
			t.Errorf("Rewrap of a %s wrapped key: a retryable error (%v); want it permanent", c.what, err)
		}
		s.clean(t, "Rewrap of a "+c.what+" wrapped key", err.Error(), want)
	}
	if s.binds(mech) {
		q := req
		q.Src = keys.ByID("keystest-rewrap-other")
		if r2, err := keys.Rewrap(ctx, k, q); err == nil {
			t.Errorf("Rewrap with the wrong source binding succeeded (%d bytes): want it refused", len(r2.Wrapped))
		}
	}
}
