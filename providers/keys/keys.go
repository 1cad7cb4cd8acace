// Package keys is the seam between rekey's pipeline and the custodians of
// key-encryption keys (KEKs): PKCS#11 HSMs (package hsmio), and KMS APIs as
// further providers/<name> packages. A custodian scheme registers once
// (Register) with an opener, a parser for its key references and the wrap
// mechanisms it owns; the pipeline never imports a backend directly.
//
// A wrapped key is an opaque blob owned by its scheme, plus a Binding: what
// the custodian bound it to (rekey's dek_id, a KMS encryption context, an AAD
// list). Unwrapped secrets are held in *DEK values (16 to 64 bytes: an AES
// key, a serialized library key, a key and an IV) whose String method never
// prints them, and which are zeroed when dropped.
//
// Retry, rate limiting, failure classification and the DEK cache are
// written once here (decorate.go, cache.go) for every scheme. Optional
// abilities are separate interfaces found by type assertion through the
// decorators: Generator, Preflighter, Rewrapper.
//
// Limits: a DEK's AEAD is AES-GCM over the whole secret; formats whose
// secret is something else (a serialized key, key‖IV) derive their own.
package keys

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// DEKSize is the size of the DEKs rekey creates: AES-256.
const DEKSize = 32

// Bounds of an unwrapped secret a custodian may hand back: AES keys, and
// libraries' serialized keys (a Tink AES-GCM key is 34 bytes; an
// AES-CTR-HMAC one about 94, which rekey reads only to refuse by name).
const (
	MinSecret = 16
	MaxSecret = 128
)

// DEK is an unwrapped data-encryption key (or another wrapped secret). It
// exists only in memory.
type DEK struct {
	b    []byte
	once sync.Once
	aead cipher.AEAD
	err  error
}

// NewDEK copies b into a new DEK. The caller should zero b afterwards.
func NewDEK(b []byte) (*DEK, error) {
	if len(b) < MinSecret || len(b) > MaxSecret {
		return nil, fmt.Errorf("%w: unwrapped secret is %d bytes, rekey takes %d to %d", ErrBadKey, len(b), MinSecret, MaxSecret)
	}
	d := &DEK{b: make([]byte, len(b))}
	copy(d.b, b)
	return d, nil
}

// Bytes returns the key bytes. They must not be retained past Zero, logged or
// written anywhere.
func (d *DEK) Bytes() []byte { return d.b }

// Len is the secret's length in bytes.
func (d *DEK) Len() int { return len(d.b) }

// AEAD returns a software AES-GCM instance keyed with d (AES-128, -192 or
// -256 by the secret's length), built once per DEK.
func (d *DEK) AEAD() (cipher.AEAD, error) {
	d.once.Do(func() {
		switch len(d.b) {
		case 16, 24, 32:
		default:
			d.err = fmt.Errorf("%w: a %d-byte secret is not an AES key (16, 24 or 32 bytes)", ErrBadKey, len(d.b))
			return
		}
		block, err := aes.NewCipher(d.b)
		if err != nil {
			d.err = err
			return
		}
		d.aead, d.err = cipher.NewGCM(block)
	})
	return d.aead, d.err
}

// Zero overwrites the key bytes. The AEAD built from them must not be used
// afterwards.
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

// Binding is what a wrapped key is bound to, so it cannot be moved to
// another record or context. Each scheme maps it onto what its custodian
// binds: PKCS#11 AES-GCM uses it as AAD (rekey's own: the dek_id), a KMS
// as its encryption context, Key Protect as its AAD list.
type Binding struct {
	// DEKID is rekey's own binding: the DEK table's dek_id.
	DEKID string
	// Context is a KMS encryption context (string pairs).
	Context map[string]string
	// AAD is an ordered list of strings (Key Protect's additional
	// authentication data).
	AAD []string
}

// ByID is the binding of a DEK table row written by rekey.
func ByID(dekID string) Binding { return Binding{DEKID: dekID} }

// IsZero reports whether b binds nothing.
func (b Binding) IsZero() bool { return b.DEKID == "" && len(b.Context) == 0 && len(b.AAD) == 0 }

// String names the binding for messages (values are not secret).
func (b Binding) String() string {
	switch {
	case b.IsZero():
		return "unbound"
	case len(b.Context) == 0 && len(b.AAD) == 0:
		return fmt.Sprintf("dek_id %q", b.DEKID)
	}
	var parts []string
	if b.DEKID != "" {
		parts = append(parts, fmt.Sprintf("dek_id=%q", b.DEKID))
	}
	ks := make([]string, 0, len(b.Context))
	for k := range b.Context {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%q", k, b.Context[k]))
	}
	for _, a := range b.AAD {
		parts = append(parts, fmt.Sprintf("aad=%q", a))
	}
	return strings.Join(parts, " ")
}

// KEK is a key-encryption key held by a custodian.
type KEK interface {
	// URI is the key's canonical reference without secrets: what DEK
	// tables and ledgers record.
	URI() string
	// Mechanism is the wrap mechanism this KEK wraps with (one its scheme
	// registered).
	Mechanism() string
	// Wrap wraps dek, bound to b where the mechanism allows.
	Wrap(ctx context.Context, b Binding, dek *DEK) ([]byte, error)
	// Unwrap unwraps a key wrapped with mechanism mech and bound to b.
	Unwrap(ctx context.Context, b Binding, mech string, wrapped []byte) (*DEK, error)
}

// Generator is implemented by KEKs whose custodian can produce random DEKs
// (an HSM's RNG, a KMS's GenerateDataKey).
type Generator interface {
	GenerateDEK(ctx context.Context) (*DEK, error)
}

// Rewrapper is implemented by KEKs whose custodian can move a wrapped key to
// another of its keys without the DEK leaving it (KMS ReEncrypt, Key
// Protect rewrap, a PKCS#11 token holding both keys). Callers use
// CanRewrap and Rewrap, which see through decorators.
type Rewrapper interface {
	// CanRewrapTo reports whether Rewrap can reach dst (dst is undecorated:
	// Base of the target KEK) for keys wrapped with srcMech: same
	// custodian, and dst's mechanism one it can produce inside.
	CanRewrapTo(dst KEK, srcMech string) bool
	// Rewrap returns r.Wrapped re-wrapped under r.Dst with r.Dst's
	// mechanism. It returns ErrNoRewrap (wrapped) when this particular key
	// cannot be rewrapped inside (the caller then unwraps and wraps it
	// itself); other errors are classified like Unwrap's.
	Rewrap(ctx context.Context, r RewrapRequest) (RewrapResult, error)
}

// RewrapRequest is one key to rewrap inside its custodian.
type RewrapRequest struct {
	Src     Binding // what the wrapped key is bound to
	SrcMech string  // its wrap mechanism
	Wrapped []byte
	Dst     KEK     // the target key (undecorated)
	DstB    Binding // what the new wrap binds
	// KCV, when the DEK table has one, is the key's check value
	// (schemas.KCV under Src.DEKID). A custodian that can compute it
	// inside checks it before wrapping and says so in RewrapResult.Proof;
	// one that cannot leaves Proof empty and the caller decides.
	KCV []byte
}

// RewrapResult is what a custodian-side rewrap returns.
type RewrapResult struct {
	Wrapped []byte
	// Proof is schemas.ProofKCV when the custodian checked RewrapRequest.KCV
	// inside (a mismatch is an error wrapping schemas.ErrKCVMismatch);
	// empty when it did not.
	Proof string
	// KCV is the key's check value computed inside, when the custodian can
	// (so a DEK table row without one gains it); nil otherwise.
	KCV []byte
	// Verified reports that the custodian unwrapped the new wrap inside
	// and found the same key: rekey's verify-before-commit was done there.
	// When false, the caller verifies by unwrapping the new wrap itself.
	Verified bool
}

// ErrNoRewrap says a custodian cannot rewrap this key inside (its length,
// its mechanism): the caller unwraps and wraps it.
var ErrNoRewrap = errors.New("custodian cannot rewrap this key inside")

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

// Reserver is implemented by KEKs whose custodian limits concurrent
// sessions (a PKCS#11 token's session count): Reserve grows what this
// process may use to n operations at once, within the custodian's limit,
// and returns how many it can run at once. Callers use Reserve, which
// sees through decorators.
type Reserver interface {
	Reserve(n int) (int, error)
}

// Options tune how a KEK is opened.
type Options struct {
	// Wrap is the mechanism Wrap uses (one of the scheme's); empty picks
	// the backend's default for the key type.
	Wrap string
	// Sessions caps concurrent sessions to the custodian; 0 picks a default.
	Sessions int
}
