// Package keys is the interface between rekey's pipeline and the custodians
// of key-encryption keys (KEKs): PKCS#11 HSMs today (package hsmio), cloud
// KMS APIs later. A KEK is opened from its URI through a registry keyed by
// URI scheme; the pipeline never imports a backend directly.
//
// Unwrapped DEKs are held in *DEK values whose String method never prints
// the key, and which callers zero with Zero when done.
//
// Limits: only 256-bit AES DEKs are supported.
package keys

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// DEKSize is the size of a data-encryption key: AES-256.
const DEKSize = 32

// DEK is an unwrapped data-encryption key. It exists only in memory.
type DEK struct {
	b []byte
}

// NewDEK copies b into a new DEK. The caller should zero b afterwards.
func NewDEK(b []byte) (*DEK, error) {
	if len(b) != DEKSize {
		return nil, fmt.Errorf("%w: DEK is %d bytes, want %d", ErrBadKey, len(b), DEKSize)
	}
	d := &DEK{b: make([]byte, DEKSize)}
	copy(d.b, b)
	return d, nil
}

// Bytes returns the key bytes. They must not be retained past Zero, logged or
// written anywhere.
func (d *DEK) Bytes() []byte { return d.b }

// AEAD returns a software AES-256-GCM instance keyed with d.
func (d *DEK) AEAD() (cipher.AEAD, error) {
	block, err := aes.NewCipher(d.b)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Zero overwrites the key bytes.
func (d *DEK) Zero() {
	if d == nil {
		return
	}
	clear(d.b)
}

// String never prints the key.
func (d *DEK) String() string { return "DEK(***)" }

// GoString never prints the key.
func (d *DEK) GoString() string { return "DEK(***)" }

// Format never prints the key, whatever the verb.
func (d *DEK) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("DEK(***)")) }

// KEK is a key-encryption key held by a custodian.
type KEK interface {
	// URI is the key's reference without secrets: what the DEK table's kek
	// column holds.
	URI() string
	// Mechanism is the wrap mechanism this KEK uses to wrap (a schemas.Wrap*).
	Mechanism() string
	// Wrap wraps dek. dekID is bound to the result where the mechanism allows
	// (AES-GCM).
	Wrap(ctx context.Context, dekID string, dek *DEK) ([]byte, error)
	// Unwrap unwraps a DEK wrapped with mechanism mech.
	Unwrap(ctx context.Context, dekID, mech string, wrapped []byte) (*DEK, error)
}

// Generator is implemented by KEKs whose custodian can produce random DEKs
// (an HSM's RNG).
type Generator interface {
	GenerateDEK(ctx context.Context) (*DEK, error)
}

// Check is one preflight finding.
type Check struct {
	Name string
	OK   bool
	Warn bool // OK but worth a look
	Info string
}

// Preflighter is implemented by KEKs that can check themselves before a run:
// that the key exists, allows the operations needed, and round-trips a test
// key.
type Preflighter interface {
	Preflight(ctx context.Context, needWrap, needUnwrap bool) []Check
}

// Options tune how a KEK is opened.
type Options struct {
	// Wrap is the mechanism Wrap uses (a schemas.Wrap* name); empty picks
	// the backend's default for the key type.
	Wrap string
	// Sessions caps concurrent sessions to the custodian; 0 picks a default.
	Sessions int
}

// Opener opens a KEK from its URI. Secrets (PINs) are resolved by the
// backend from references inside the URI, never passed in clear.
type Opener func(ctx context.Context, uri string, opts Options) (KEK, error)

var (
	regMu    sync.RWMutex
	registry = map[string]Opener{}
)

// Register makes a backend available for a URI scheme. It panics on a
// duplicate scheme: two backends for one scheme is a build mistake.
func Register(scheme string, o Opener) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic(fmt.Sprintf("keys: backend for scheme %q registered twice", scheme))
	}
	registry[scheme] = o
}

// Open resolves uri with the backend registered for its scheme.
func Open(ctx context.Context, uri string, opts Options) (KEK, error) {
	scheme, _, ok := strings.Cut(uri, ":")
	if !ok || scheme == "" {
		return nil, fmt.Errorf("%w: %q has no scheme (expected e.g. pkcs11:token=...;object=...)", ErrBadURI, uri)
	}
	regMu.RLock()
	o := registry[scheme]
	regMu.RUnlock()
	if o == nil {
		return nil, fmt.Errorf("%w: no key backend for scheme %q (registered: %s); for pkcs11: import _ \"rekey/hsmio\"", ErrBadURI, scheme, strings.Join(Schemes(), ", "))
	}
	return o(ctx, uri, opts)
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
