package ibmkp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"rekey/providers/keys"
	"rekey/schemas"
)

// Mechanism is the wrap mechanism of Key Protect root keys, as DEK tables
// write it.
const Mechanism = "ibm-kp"

// DefaultRate is the default budget, in requests per second, of one
// Key Protect or HPCS instance (see the package doc for why this number).
const DefaultRate = 50

// DefaultConcurrency is how many requests a worker process keeps in flight
// on one instance when the job sets no --workers: enough to fill
// DefaultRate at the ~100 ms a call across regions takes.
const DefaultConcurrency = 8

func init() {
	keys.Register(keys.Scheme{
		Name: Scheme,
		Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			k, err := Open(ctx, uri, opts)
			if err != nil {
				return nil, err // not a typed nil inside a non-nil interface
			}
			return k, nil
		},
		Parse:       parseRef,
		Mechanisms:  []string{Mechanism},
		Example:     example + "?apikey-source=env:" + DefaultAPIKeyEnv,
		Import:      "rekey/providers/ibmkp",
		Rate:        DefaultRate,
		Concurrency: DefaultConcurrency,
	})
}

// KEK is a Key Protect or HPCS root key. It is safe for concurrent use.
type KEK struct {
	ref    Ref
	uri    string // canonical
	keyURL string // <endpoint>/api/v2/keys/<key>
	ts     *tokenSource
	hc     *http.Client
}

var (
	_ keys.KEK         = (*KEK)(nil)
	_ keys.Generator   = (*KEK)(nil)
	_ keys.Preflighter = (*KEK)(nil)
	_ keys.Rewrapper   = (*KEK)(nil)
)

// Open resolves the API key, and checks that the key exists: a missing key
// is keys.ErrKeyNotFound, a deleted one keys.ErrNotPermitted. Its state
// is otherwise left to Preflight and to each operation's answer.
func Open(ctx context.Context, uri string, opts keys.Options) (*KEK, error) {
	r, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if opts.Wrap != "" && opts.Wrap != Mechanism {
		return nil, fmt.Errorf("ibmkp: open %s: %w: %q (Key Protect root keys wrap with %s)", r.Canonical(), keys.ErrMechanism, opts.Wrap, Mechanism)
	}
	apikey, err := resolveAPIKey(r.APIKeySource)
	if err != nil {
		return nil, fmt.Errorf("ibmkp: open %s: %w", r.Canonical(), err)
	}
	iam := r.IAMEndpoint
	if iam == "" {
		iam = DefaultIAMEndpoint
	}
	hc := newClient()
	k := &KEK{ref: r, uri: r.Canonical(), keyURL: r.Endpoint + "/api/v2/keys/" + r.Key, ts: sharedSource(iam, apikey, hc), hc: hc}
	m, err := k.metadata(ctx, "open key")
	if err != nil {
		return nil, err
	}
	if m.State == stateDestroyed {
		return nil, fmt.Errorf("ibmkp: open %s: %w: the key was deleted (state 5, Destroyed); a deleted key can be restored for 30 days", k.uri, keys.ErrNotPermitted)
	}
	return k, nil
}

// Key states (Key Protect's integer mapping).
const (
	stateActive      = 1
	stateSuspended   = 2
	stateDeactivated = 3
	stateDestroyed   = 5
)

type keyMetadata struct {
	State       int  `json:"state"`
	Extractable bool `json:"extractable"`
	KeyVersion  *struct {
		ID string `json:"id"`
	} `json:"keyVersion"`
}

func (k *KEK) metadata(ctx context.Context, op string) (keyMetadata, error) {
	var out struct {
		Resources []keyMetadata `json:"resources"`
	}
	if err := k.call(ctx, op, http.MethodGet, "metadata", nil, &out); err != nil {
		return keyMetadata{}, err
	}
	if len(out.Resources) != 1 {
		return keyMetadata{}, fmt.Errorf("ibmkp: %s with %s: %w", op, k.uri, keys.Retryable(fmt.Errorf("metadata answer holds %d keys, want 1", len(out.Resources))))
	}
	return out.Resources[0], nil
}

// URI is the key's canonical reference.
func (k *KEK) URI() string { return k.uri }

// Mechanism is ibm-kp.
func (k *KEK) Mechanism() string { return Mechanism }

// CustodianID is the service instance at its endpoint.
func (k *KEK) CustodianID() string { return k.ref.custodian() }

// String, GoString and Format print the reference only: never the API key
// or a token the KEK holds.
func (k *KEK) String() string             { return "ibmkp.KEK(" + k.uri + ")" }
func (k *KEK) GoString() string           { return k.String() }
func (k *KEK) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// Wrap wraps dek under the key's latest version, bound to b's AAD list.
func (k *KEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	op := "wrap (" + b.String() + ")"
	aad, err := AAD(b)
	if err != nil {
		return nil, fmt.Errorf("ibmkp: %s with %s: %w", op, k.uri, err)
	}
	body := keyAction(dek.Bytes(), "", aad)
	defer clear(body)
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	if err := k.call(ctx, op, http.MethodPost, "actions/wrap", body, &out); err != nil {
		return nil, err
	}
	if err := checkWrapped(out.Ciphertext); err != nil {
		return nil, fmt.Errorf("ibmkp: %s with %s: Key Protect answered a ciphertext rekey cannot store: %v", op, k.uri, err)
	}
	return []byte(out.Ciphertext), nil
}

// Unwrap unwraps a DEK wrapped with ibm-kp and bound to b. A newer
// ciphertext the service may return (the key was rotated since the wrap)
// is dropped: UnwrapLatest returns it.
func (k *KEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	dek, _, err := k.UnwrapLatest(ctx, b, mech, wrapped)
	return dek, err
}

// UnwrapLatest is Unwrap that also returns the ciphertext Key Protect
// answers when the root key was rotated after wrapped was made: the same
// DEK, bound to the same AAD, under the key's latest version, for the DEK
// table to store. latest is nil when wrapped is already current.
func (k *KEK) UnwrapLatest(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (dek *keys.DEK, latest []byte, err error) {
	op := "unwrap (" + b.String() + ")"
	fail := func(err error) error { return fmt.Errorf("ibmkp: %s with %s: %w", op, k.uri, err) }
	if mech != Mechanism {
		return nil, nil, fail(fmt.Errorf("%w: %q (a Key Protect root key unwraps %s keys only)", keys.ErrMechanism, mech, Mechanism))
	}
	if err := checkWrapped(string(wrapped)); err != nil {
		return nil, nil, fail(fmt.Errorf("%w: %v", keys.ErrUnwrapFailed, err))
	}
	aad, err := AAD(b)
	if err != nil {
		return nil, nil, fail(fmt.Errorf("%w: %v", keys.ErrUnwrapFailed, err))
	}
	body := keyAction(nil, string(wrapped), aad)
	var out struct {
		Plaintext  []byte `json:"plaintext"` // base64 in JSON
		Ciphertext string `json:"ciphertext"`
	}
	defer func() { clear(out.Plaintext) }()
	if err := k.call(ctx, op, http.MethodPost, "actions/unwrap", body, &out); err != nil {
		return nil, nil, err
	}
	dek, err = keys.NewDEK(out.Plaintext)
	if err != nil {
		return nil, nil, fail(err)
	}
	if out.Ciphertext != "" && out.Ciphertext != string(wrapped) && checkWrapped(out.Ciphertext) == nil {
		latest = []byte(out.Ciphertext)
	}
	return dek, latest, nil
}

// GenerateDEK asks Key Protect for a random 32-byte DEK (a wrap request
// without plaintext: the service draws it from its HSM). The wrapped copy
// it also returns, bound to nothing, is discarded.
func (k *KEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	var out struct {
		Plaintext []byte `json:"plaintext"`
	}
	defer func() { clear(out.Plaintext) }()
	if err := k.call(ctx, "generate a DEK", http.MethodPost, "actions/wrap", []byte("{}"), &out); err != nil {
		return nil, err
	}
	if len(out.Plaintext) != keys.DEKSize {
		return nil, fmt.Errorf("ibmkp: generate a DEK with %s: %w: Key Protect returned %d bytes, want %d", k.uri, keys.ErrBadKey, len(out.Plaintext), keys.DEKSize)
	}
	return keys.NewDEK(out.Plaintext)
}

// CanRewrapTo implements keys.Rewrapper: Key Protect's rewrap moves a
// ciphertext to the latest version of the same root key, so dst must be
// this very key (same endpoint, instance and key ID). Another key, or
// another instance (HPCS beta to production), needs unwrap and wrap.
func (k *KEK) CanRewrapTo(dst keys.KEK, srcMech string) bool {
	d, ok := dst.(*KEK)
	return ok && srcMech == Mechanism && d.ref.custodian() == k.ref.custodian() && d.ref.Key == k.ref.Key
}

// Rewrap implements keys.Rewrapper with Key Protect's rewrap action: the
// DEK never leaves the service. The AAD cannot change on the way, so a
// request whose target binding differs returns keys.ErrNoRewrap.
// Verified is false: the caller checks the new wrap by unwrapping it.
func (k *KEK) Rewrap(ctx context.Context, r keys.RewrapRequest) (keys.RewrapResult, error) {
	op := "rewrap (" + r.Src.String() + ")"
	fail := func(err error) (keys.RewrapResult, error) {
		return keys.RewrapResult{}, fmt.Errorf("ibmkp: %s with %s: %w", op, k.uri, err)
	}
	if r.Dst == nil || !k.CanRewrapTo(r.Dst, r.SrcMech) {
		return fail(fmt.Errorf("%w: Key Protect rewraps within one root key only", keys.ErrNoRewrap))
	}
	src, err := AAD(r.Src)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", keys.ErrUnwrapFailed, err))
	}
	if dst, err := AAD(r.DstB); err != nil || !slices.Equal(src, dst) {
		return fail(fmt.Errorf("%w: the target binding differs, and rewrap keeps the AAD", keys.ErrNoRewrap))
	}
	if err := checkWrapped(string(r.Wrapped)); err != nil {
		return fail(fmt.Errorf("%w: %v", keys.ErrUnwrapFailed, err))
	}
	body := keyAction(nil, string(r.Wrapped), src)
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	if err := k.call(ctx, op, http.MethodPost, "actions/rewrap", body, &out); err != nil {
		return keys.RewrapResult{}, err
	}
	if err := checkWrapped(out.Ciphertext); err != nil {
		return fail(fmt.Errorf("Key Protect answered a ciphertext rekey cannot store: %v", err))
	}
	return keys.RewrapResult{Wrapped: []byte(out.Ciphertext)}, nil
}

// Preflight implements keys.Preflighter: the API key buys a token, the key
// exists, is a root key and its state allows the operations, and a
// throwaway DEK round-trips when wrapping is needed.
func (k *KEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	if _, err := k.ts.token(ctx); err != nil {
		return []keys.Check{{Name: "IAM token for " + k.uri, Info: err.Error()}}
	}
	out := []keys.Check{{Name: "IAM token", OK: true, Info: "API key exchanged at " + k.ts.url}}
	m, err := k.metadata(ctx, "read key metadata")
	if err != nil {
		return append(out, keys.Check{Name: "key " + k.uri, Info: err.Error()})
	}
	c := keys.Check{Name: "key " + k.uri}
	switch {
	case m.Extractable:
		c.Info = "a standard key: Key Protect wraps only with root keys"
	case m.State == stateActive:
		c.OK, c.Info = true, "active root key"
	case m.State == stateDeactivated && !needWrap:
		c.OK, c.Warn, c.Info = true, true, "deactivated (expired): it unwraps and rewraps, but wraps no more"
	case m.State == stateDeactivated:
		c.Info = "deactivated (expired): it can no longer wrap"
	case m.State == stateSuspended:
		c.Info = "suspended (disabled): enable it (ibmcloud kp key enable) before the run"
	case m.State == stateDestroyed:
		c.Info = "destroyed (deleted)"
	default:
		c.Info = fmt.Sprintf("in state %d", m.State)
	}
	if out = append(out, c); !c.OK || !needWrap {
		return out // a source key may be unwrap-only: a round trip needs wrap
	}
	test, err := keys.NewDEK(bytes.Repeat([]byte{0x5a}, keys.DEKSize))
	if err != nil {
		return append(out, keys.Check{Name: "round trip", Info: err.Error()})
	}
	defer test.Zero()
	b := keys.ByID("rekey-preflight")
	w, err := k.Wrap(ctx, b, test)
	if err != nil {
		return append(out, keys.Check{Name: "test wrap with " + k.uri, Info: err.Error()})
	}
	got, err := k.Unwrap(ctx, b, Mechanism, w)
	if err != nil {
		return append(out, keys.Check{Name: "test unwrap with " + k.uri, Info: err.Error()})
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), test.Bytes()) {
		return append(out, keys.Check{Name: "test round trip with " + k.uri, Info: "unwrapped key differs from the wrapped one"})
	}
	return append(out, keys.Check{Name: "test wrap/unwrap round trip with " + k.uri, OK: true, Info: Mechanism})
}

// AADPrefix starts every AAD element rekey writes for a binding's DEKID
// and Context; a Binding.AAD element may not start with it.
const AADPrefix = "rekey:"

// maxAADChars is Key Protect's limit on one AAD string.
const maxAADChars = 255

// AAD is the Key Protect AAD list a binding maps to, in this order:
//
//   - "rekey:dek_id=" + DEKID, when DEKID is set;
//   - "rekey:ctx:" + QueryEscape(key) + "=" + QueryEscape(value) for each
//     Context entry, by key (net/url.QueryEscape, i.e. form encoding);
//   - the AAD elements, unchanged and in order (a Key Protect AAD list
//     written by another tool is Binding.AAD alone).
//
// No AAD element may start with "rekey:", so the list maps back to one
// binding only. A zero binding is no AAD. Each element is at most 255
// characters, Key Protect's limit.
func AAD(b keys.Binding) ([]string, error) {
	var l []string
	if b.DEKID != "" {
		l = append(l, AADPrefix+"dek_id="+b.DEKID)
	}
	ks := make([]string, 0, len(b.Context))
	for c := range b.Context {
		ks = append(ks, c)
	}
	sort.Strings(ks)
	for _, c := range ks {
		l = append(l, AADPrefix+"ctx:"+url.QueryEscape(c)+"="+url.QueryEscape(b.Context[c]))
	}
	for i, a := range b.AAD {
		if strings.HasPrefix(a, AADPrefix) {
			return nil, fmt.Errorf("AAD element %d starts with %q, which rekey keeps for its own binding", i, AADPrefix)
		}
		l = append(l, a)
	}
	for _, s := range l {
		if n := utf8.RuneCountInString(s); n > maxAADChars {
			return nil, fmt.Errorf("binding element %.40q... is %d characters; Key Protect takes at most %d per AAD string", s, n, maxAADChars)
		}
	}
	return l, nil
}

// keyAction is a key action's request body. It is built here rather than
// by json.Marshal so that the base64 of a plaintext exists only in the
// returned buffer, which the caller clears; it is allocated once, at its
// final size, so no copy is left behind by growing it.
func keyAction(plaintext []byte, ciphertext string, aad []string) []byte {
	var aadJSON []byte
	if len(aad) > 0 {
		aadJSON, _ = json.Marshal(aad)
	}
	buf := make([]byte, 0, 48+base64.StdEncoding.EncodedLen(len(plaintext))+len(ciphertext)+len(aadJSON))
	sep := "{"
	if plaintext != nil {
		buf = append(buf, sep+`"plaintext":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, plaintext)
		buf, sep = append(buf, '"'), ","
	}
	if ciphertext != "" { // checkWrapped: base64 characters only, nothing to escape
		buf = append(buf, sep+`"ciphertext":"`...)
		buf = append(buf, ciphertext...)
		buf, sep = append(buf, '"'), ","
	}
	if aadJSON != nil {
		buf = append(buf, sep+`"aad":`...)
		buf, sep = append(buf, aadJSON...), ","
	}
	if sep == "{" {
		buf = append(buf, sep...)
	}
	return append(buf, '}')
}

// checkWrapped refuses what cannot be a Key Protect ciphertext (a base64
// string) before it is sent anywhere.
func checkWrapped(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty ciphertext")
	case len(s) > schemas.MaxWrappedDEK:
		return fmt.Errorf("%d-byte ciphertext, more than the %d a DEK table holds", len(s), schemas.MaxWrappedDEK)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=') {
			return fmt.Errorf("ciphertext is not base64 (byte %d)", i)
		}
	}
	return nil
}
