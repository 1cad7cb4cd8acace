package inventory

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
)

// The package's one door to the tokens. Every PKCS#11 call of inventory,
// copy and export goes through p11API, the few calls the package makes,
// so that a KeyToken can report each call (Trace): an audit of what touched
// which object, and the proof in the tests that no key value is ever asked
// for. The code never requests CKA_VALUE or a private-key component of a
// secret or private key; key material only leaves a token wrapped.

// p11API is the part of PKCS#11 that inventory and transfer use.
// *pkcs11.Ctx implements it.
type p11API interface {
	GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error)
	GetMechanismInfo(slot uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error)
	OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error
	CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error)
	WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrappingkey, key pkcs11.ObjectHandle) ([]byte, error)
	UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingkey pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error)
	SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
}

var _ p11API = (*pkcs11.Ctx)(nil)

// Call is one PKCS#11 call made on an object by the inventory and transfer
// code, reported to a KeyToken's Trace function.
type Call struct {
	Token  string // token label
	Func   string // "C_GetAttributeValue", "C_WrapKey", ...
	Object uint   // the object acted on (for C_WrapKey: the key wrapped)
	// Attrs are the attribute types asked for (C_GetAttributeValue) or
	// given in the template (C_CreateObject, C_UnwrapKey, C_GenerateKey).
	Attrs []uint
	// Result is the new object's handle for calls that create one.
	Result uint
}

// tracedAPI reports the object-touching calls of an inner p11API.
type tracedAPI struct {
	p11API
	token string
	f     func(Call)
}

func attrTypes(a []*pkcs11.Attribute) []uint {
	out := make([]uint, len(a))
	for i, x := range a {
		out[i] = x.Type
	}
	return out
}

func (t *tracedAPI) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	t.f(Call{Token: t.token, Func: "C_GetAttributeValue", Object: uint(o), Attrs: attrTypes(a)})
	return t.p11API.GetAttributeValue(sh, o, a)
}

func (t *tracedAPI) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	t.f(Call{Token: t.token, Func: "C_SetAttributeValue", Object: uint(o), Attrs: attrTypes(a)})
	return t.p11API.SetAttributeValue(sh, o, a)
}

func (t *tracedAPI) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	h, err := t.p11API.CreateObject(sh, temp)
	t.f(Call{Token: t.token, Func: "C_CreateObject", Attrs: attrTypes(temp), Result: uint(h)})
	return h, err
}

func (t *tracedAPI) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	t.f(Call{Token: t.token, Func: "C_DestroyObject", Object: uint(o)})
	return t.p11API.DestroyObject(sh, o)
}

func (t *tracedAPI) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	h, err := t.p11API.GenerateKey(sh, m, temp)
	t.f(Call{Token: t.token, Func: "C_GenerateKey", Attrs: attrTypes(temp), Result: uint(h)})
	return h, err
}

func (t *tracedAPI) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	pub, priv, err := t.p11API.GenerateKeyPair(sh, m, public, private)
	t.f(Call{Token: t.token, Func: "C_GenerateKeyPair", Attrs: attrTypes(private), Result: uint(priv)})
	return pub, priv, err
}

func (t *tracedAPI) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping, key pkcs11.ObjectHandle) ([]byte, error) {
	t.f(Call{Token: t.token, Func: "C_WrapKey", Object: uint(key)})
	return t.p11API.WrapKey(sh, m, wrapping, key)
}

func (t *tracedAPI) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrapping pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	h, err := t.p11API.UnwrapKey(sh, m, unwrapping, wrapped, a)
	t.f(Call{Token: t.token, Func: "C_UnwrapKey", Object: uint(unwrapping), Attrs: attrTypes(a), Result: uint(h)})
	return h, err
}

func (t *tracedAPI) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	t.f(Call{Token: t.token, Func: "C_EncryptInit", Object: uint(o)})
	return t.p11API.EncryptInit(sh, m, o)
}

func (t *tracedAPI) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	t.f(Call{Token: t.token, Func: "C_DecryptInit", Object: uint(o)})
	return t.p11API.DecryptInit(sh, m, o)
}

func (t *tracedAPI) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	t.f(Call{Token: t.token, Func: "C_SignInit", Object: uint(o)})
	return t.p11API.SignInit(sh, m, o)
}

// SecretAttr reports whether a is an attribute that holds key material when
// read from a secret or private key: CKA_VALUE and the RSA private
// components.
func SecretAttr(a uint) bool {
	switch a {
	case pkcs11.CKA_VALUE, pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_PRIME_1, pkcs11.CKA_PRIME_2,
		pkcs11.CKA_EXPONENT_1, pkcs11.CKA_EXPONENT_2, pkcs11.CKA_COEFFICIENT:
		return true
	}
	return false
}

// KeyToken is a logged-in token seen as a set of keys, for inventory and
// transfer. It holds one PKCS#11 session of its own; session objects it
// creates (transport keys) disappear with it at the latest when Close
// closes that session. A KeyToken is not safe for concurrent use.
type KeyToken struct {
	uri hsmio.URI
	raw hsmio.RawToken
	api p11API
	sh  pkcs11.SessionHandle
	mu  sync.Mutex
}

// OpenKeyToken logs in to the token named by a pkcs11: URI. The URI may
// name a key (object= or id=): then the inventory holds only that key.
func OpenKeyToken(_ context.Context, uri string) (*KeyToken, error) {
	u, err := hsmio.ParseTokenURI(uri)
	if err != nil {
		return nil, err
	}
	raw, err := hsmio.OpenRawToken(u)
	if err != nil {
		return nil, err
	}
	return &KeyToken{uri: u, raw: raw, api: raw.Ctx}, nil
}

// Label is the token's label (or "serial N").
func (k *KeyToken) Label() string {
	if k.uri.Token == "" {
		return "serial " + k.uri.Serial
	}
	return k.uri.Token
}

// URI is the token's reference without module path or PIN source.
func (k *KeyToken) URI() string {
	u := k.uri
	u.Object, u.ID, u.Type = "", nil, ""
	return u.KeyURI()
}

// keyURI names one object on this token.
func (k *KeyToken) keyURI(label string, id []byte, typ string) string {
	u := k.uri
	u.Object, u.ID, u.Type = label, id, typ
	return u.KeyURI()
}

// Trace makes the KeyToken report every object-touching PKCS#11 call to f
// (nil: stop). Call it before the calls to be traced.
func (k *KeyToken) Trace(f func(Call)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f == nil {
		k.api = k.raw.Ctx
		return
	}
	k.api = &tracedAPI{p11API: k.raw.Ctx, token: k.Label(), f: f}
}

// sameToken reports whether two KeyTokens are the same token: the same slot
// of the same module, whichever label, serial or PIN source named it.
func (k *KeyToken) sameToken(o *KeyToken) bool {
	return k.raw.Slot == o.raw.Slot && k.uri.ModulePath == o.uri.ModulePath
}

// session returns the KeyToken's own session, opening it on first use.
func (k *KeyToken) session() (pkcs11.SessionHandle, error) {
	if k.sh != 0 {
		return k.sh, nil
	}
	sh, err := k.api.OpenSession(k.raw.Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, hsmio.Classify(err, fmt.Sprintf("open a session on token %q", k.Label()))
	}
	k.sh = sh
	return sh, nil
}

// Close closes the KeyToken's session, which destroys any session object
// (transport key) still on it. The token itself stays logged in for the
// process.
func (k *KeyToken) Close() error {
	if k.sh == 0 {
		return nil
	}
	err := k.api.CloseSession(k.sh)
	k.sh = 0
	return err
}

// attr reads one attribute; ok is false when the object has no such
// attribute or will not show it.
func (k *KeyToken) attr(h pkcs11.ObjectHandle, t uint) (v []byte, ok bool, err error) {
	if SecretAttr(t) {
		// The one place attributes are read: refuse key material here so no
		// caller can ask for it by mistake (certificates use certValue).
		return nil, false, fmt.Errorf("internal error: refusing to read key material attribute 0x%x", t)
	}
	return k.rawAttr(h, t)
}

func (k *KeyToken) rawAttr(h pkcs11.ObjectHandle, t uint) (v []byte, ok bool, err error) {
	sh, err := k.session()
	if err != nil {
		return nil, false, err
	}
	a, err := k.api.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
	var p pkcs11.Error
	if errors.As(err, &p) && (p == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || p == pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, hsmio.Classify(err, fmt.Sprintf("read attributes on token %q", k.Label()))
	}
	if len(a) == 0 || a[0].Value == nil {
		return nil, false, nil
	}
	return a[0].Value, true, nil
}

func (k *KeyToken) boolAttr(h pkcs11.ObjectHandle, t uint) (bool, error) {
	v, ok, err := k.attr(h, t)
	return ok && len(v) > 0 && v[0] != 0, err
}

func (k *KeyToken) ulongAttr(h pkcs11.ObjectHandle, t uint) (uint, bool, error) {
	v, ok, err := k.attr(h, t)
	if err != nil || !ok || len(v) == 0 || len(v) > 8 {
		return 0, false, err
	}
	// CK_ULONG in host byte order; every supported platform is little-endian.
	var n uint
	for i := len(v) - 1; i >= 0; i-- {
		n = n<<8 | uint(v[i])
	}
	return n, true, nil
}

// find returns the token objects of a class, optionally with a label and
// id, in handle order.
func (k *KeyToken) find(class uint, label string, id []byte, tokenOnly bool) ([]pkcs11.ObjectHandle, error) {
	sh, err := k.session()
	if err != nil {
		return nil, err
	}
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if tokenOnly {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true))
	}
	if label != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	if err := k.api.FindObjectsInit(sh, tmpl); err != nil {
		return nil, hsmio.Classify(err, fmt.Sprintf("list objects on token %q", k.Label()))
	}
	defer func() { _ = k.api.FindObjectsFinal(sh) }()
	var out []pkcs11.ObjectHandle
	for {
		objs, _, err := k.api.FindObjects(sh, 256)
		if err != nil {
			return nil, hsmio.Classify(err, fmt.Sprintf("list objects on token %q", k.Label()))
		}
		if len(objs) == 0 {
			break
		}
		out = append(out, objs...)
		if len(out) > 1<<20 {
			return nil, fmt.Errorf("token %q holds more than %d objects of class %d; give object= in the URI", k.Label(), 1<<20, class)
		}
	}
	return out, nil
}

func (k *KeyToken) destroy(h pkcs11.ObjectHandle) error {
	sh, err := k.session()
	if err != nil {
		return err
	}
	return k.api.DestroyObject(sh, h)
}
