package keystest_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"

	"rekey/providers/keys"
	"rekey/schemas"
)

// fakekms is a fake key backend, for testing the suite itself: its keys
// are AES-256 values derived from their names and live in this process. A
// reference is "fakekms:<region>/<key>?credential=env:<VAR>", and the
// variable must hold fakeCredential. The keys eu/key-1 and eu/key-2 exist.
//
// broken selects a bug to build in (see the switch statements), so that
// TestKeystestCatchesBrokenBackends can show each check bites.
var broken string

const (
	fakeCredential = "Zq7-credential-5ecret-0123456789"
	fakeGCM        = "fakekms-gcm"    // AES-GCM, bound to the Binding
	fakeSealed     = "fakekms-sealed" // AES-GCM, bound to nothing
)

var fakeKeys = []string{"eu/key-1", "eu/key-2"}

func init() {
	keys.Register(keys.Scheme{
		Name:       "fakekms",
		Open:       fakeOpen,
		Parse:      fakeParse,
		Mechanisms: []string{fakeGCM, fakeSealed},
		Example:    "fakekms:eu/key-1?credential=env:FAKEKMS_CREDENTIAL",
		Import:     "rekey/providers/keystest (tests only)",
	})
}

var fakeName = regexp.MustCompile(`^[a-z0-9-]+/[a-z0-9-]+$`)

type fakeRef struct{ key, credentialVar string }

func parseFake(uri string) (fakeRef, error) {
	rest, ok := strings.CutPrefix(uri, "fakekms:")
	if !ok {
		return fakeRef{}, fmt.Errorf("%w: not a fakekms reference", keys.ErrBadURI)
	}
	path, query, _ := strings.Cut(rest, "?")
	if !fakeName.MatchString(path) {
		return fakeRef{}, fmt.Errorf("%w: fakekms:%q is not <region>/<key>", keys.ErrBadURI, path)
	}
	r := fakeRef{key: path}
	if query != "" {
		v, ok := strings.CutPrefix(query, "credential=env:")
		if !ok || v == "" {
			return fakeRef{}, fmt.Errorf("%w: fakekms takes only ?credential=env:<VAR>", keys.ErrBadURI)
		}
		r.credentialVar = v
	}
	return r, nil
}

func fakeParse(uri string) (keys.Ref, error) {
	r, err := parseFake(uri)
	if err != nil {
		return keys.Ref{}, err
	}
	canon := "fakekms:" + r.key
	redacted := canon
	if broken == "redaction" {
		redacted = uri
	}
	region, _, _ := strings.Cut(r.key, "/")
	return keys.Ref{Scheme: "fakekms", Canonical: canon, Redacted: redacted, Custodian: "fakekms|" + region}, nil
}

func fakeOpen(_ context.Context, uri string, opts keys.Options) (keys.KEK, error) {
	r, err := parseFake(uri)
	if err != nil {
		return nil, err
	}
	canon := "fakekms:" + r.key
	if cred := os.Getenv(r.credentialVar); r.credentialVar == "" || cred != fakeCredential {
		return nil, fmt.Errorf("fakekms: open %s: %w (set the variable named by credential=env:)", canon, keys.ErrAuthFailed)
	}
	if !slices.Contains(fakeKeys, r.key) {
		switch broken {
		case "notfound":
			return nil, fmt.Errorf("fakekms: open %s: no such key", canon)
		case "leaky-credential":
			return nil, fmt.Errorf("fakekms: open %s with credential %s: %w", canon, os.Getenv(r.credentialVar), keys.ErrKeyNotFound)
		case "typednil":
			var k *fakeKEK
			return k, fmt.Errorf("fakekms: open %s: %w", canon, keys.ErrKeyNotFound)
		}
		return nil, fmt.Errorf("fakekms: open %s: %w (known keys: %s)", canon, keys.ErrKeyNotFound, strings.Join(fakeKeys, ", "))
	}
	mech := opts.Wrap
	if mech == "" {
		mech = fakeGCM
	}
	secret := sha256.Sum256([]byte("fakekms\x00" + canon))
	block, err := aes.NewCipher(secret[:])
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &fakeKEK{uri: canon, mech: mech, gcm: gcm}, nil
}

type fakeKEK struct {
	uri, mech string
	gcm       cipher.AEAD
}

// additional is what a wrapped key is bound to: the Binding for
// fakekms-gcm, a constant for fakekms-sealed (so the two do not mix).
func additional(mech string, b keys.Binding) []byte {
	if mech == fakeSealed || broken == "unbound" {
		return []byte(fakeSealed)
	}
	if b.IsZero() {
		return nil
	}
	return schemas.BindingAAD(b.DEKID, b.Context, b.AAD)
}

func (k *fakeKEK) URI() string       { return k.uri }
func (k *fakeKEK) Mechanism() string { return k.mech }

func (k *fakeKEK) Wrap(_ context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.gcm.Seal(nonce, nonce, dek.Bytes(), additional(k.mech, b)), nil
}

func (k *fakeKEK) Unwrap(_ context.Context, b keys.Binding, mech string, w []byte) (*keys.DEK, error) {
	what := fmt.Sprintf("fakekms: unwrap (%s) with %s (%s)", b, k.uri, mech)
	fail := func(err error) error {
		if broken == "retryable" {
			return keys.Retryable(err)
		}
		return err
	}
	if mech != fakeGCM && mech != fakeSealed {
		return nil, fmt.Errorf("%s: %w", what, keys.ErrMechanism)
	}
	ns, ts := k.gcm.NonceSize(), k.gcm.Overhead()
	if broken != "panicky" && (len(w) < ns+ts+keys.MinSecret || len(w) > ns+ts+keys.MaxSecret) {
		return nil, fail(fmt.Errorf("%s: %w: %d bytes", what, keys.ErrUnwrapFailed, len(w)))
	}
	plain, err := k.gcm.Open(nil, w[:ns], w[ns:], additional(mech, b))
	if err != nil {
		switch broken {
		case "unauthenticated":
			return keys.NewDEK(w[ns : len(w)-ts])
		case "leaky-error":
			if p, err := k.gcm.Open(nil, w[:ns], w[ns:], nil); err == nil {
				return nil, fmt.Errorf("%s: %w: key %x was wrapped unbound", what, keys.ErrUnwrapFailed, p)
			}
		}
		return nil, fail(fmt.Errorf("%s: %w", what, keys.ErrUnwrapFailed))
	}
	defer clear(plain)
	if broken == "lossy-length" && len(plain)%8 != 0 {
		plain = append(plain, make([]byte, 8-len(plain)%8)...)
	}
	return keys.NewDEK(plain)
}

func (k *fakeKEK) GenerateDEK(context.Context) (*keys.DEK, error) {
	n := keys.DEKSize
	if broken == "short-generator" {
		n = 16
	}
	b := make([]byte, n)
	defer clear(b)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return keys.NewDEK(b)
}

func (k *fakeKEK) Preflight(context.Context, bool, bool) []keys.Check {
	return []keys.Check{{Name: "key " + k.uri, OK: true, Info: "fakekms, wrap " + k.mech}}
}

// flakyKEK fails its first Unwrap as a throttling KMS does.
type flakyKEK struct {
	keys.KEK
	failed atomic.Bool
}

func (f *flakyKEK) Unwrap(ctx context.Context, b keys.Binding, mech string, w []byte) (*keys.DEK, error) {
	if !f.failed.Swap(true) {
		err := fmt.Errorf("fakekms: unwrap with %s: %w (injected)", f.URI(), keys.ErrThrottled)
		if broken == "permanent-throttle" {
			return nil, err
		}
		return nil, keys.Retryable(err)
	}
	return f.KEK.Unwrap(ctx, b, mech, w)
}
