package inventory

import (
	"context"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/providers/keys"
)

// Dispositions of a key in a plan.
const (
	Transferable = "transferable" // extractable: moved under wrap by keys copy
	Recreate     = "re-create"    // cannot leave the HSM: make a new key on the target, migrate data with rekey run
	PublicOnly   = "public-only"  // signing key pair that cannot leave, public key or certificate: export-public
)

// Kinds of inventory entries.
const (
	KindSecret      = "secret-key"
	KindKeyPair     = "key-pair"
	KindPrivate     = "private-key" // private key without a public key object
	KindPublic      = "public-key"  // public key without a private key
	KindCertificate = "certificate"
)

// KeyEntry is one key (or key pair, or certificate) on a token.
type KeyEntry struct {
	Label       string   `json:"label"`
	ID          string   `json:"id"` // hex
	Kind        string   `json:"kind"`
	Type        string   `json:"type"` // aes, generic-secret, rsa, ec, x509, ...
	Bits        int      `json:"bits,omitempty"`
	Curve       string   `json:"curve,omitempty"`
	Usage       []string `json:"usage"`
	Extractable bool     `json:"extractable"`
	Sensitive   bool     `json:"sensitive"`
	Disposition string   `json:"disposition"`
	Why         string   `json:"why"`
	URI         string   `json:"uri"` // pkcs11: reference without module or PIN

	keyType   uint
	obj       pkcs11.ObjectHandle // secret key, private key, lone public key or certificate
	pub       pkcs11.ObjectHandle // public key of a pair
	ecParams  []byte
	canSign   bool
	canVerify bool
	usage     map[uint]bool // usage of obj
	pubUsage  map[uint]bool
}

// Signing reports whether the entry is a signing key pair (or a lone
// verification key).
func (e *KeyEntry) Signing() bool { return e.canSign || e.canVerify }

// RawID is the CKA_ID.
func (e *KeyEntry) RawID() []byte { b, _ := hex.DecodeString(e.ID); return b }

var usageNames = []struct {
	attr uint
	name string
}{
	{pkcs11.CKA_ENCRYPT, "encrypt"}, {pkcs11.CKA_DECRYPT, "decrypt"}, {pkcs11.CKA_WRAP, "wrap"},
	{pkcs11.CKA_UNWRAP, "unwrap"}, {pkcs11.CKA_SIGN, "sign"}, {pkcs11.CKA_VERIFY, "verify"},
	{pkcs11.CKA_DERIVE, "derive"},
}

var keyTypeNames = map[uint]string{
	pkcs11.CKK_AES: "aes", pkcs11.CKK_GENERIC_SECRET: "generic-secret", pkcs11.CKK_DES3: "des3",
	pkcs11.CKK_DES2: "des2", pkcs11.CKK_DES: "des", pkcs11.CKK_RSA: "rsa", pkcs11.CKK_EC: "ec",
	pkcs11.CKK_DSA: "dsa", pkcs11.CKK_DH: "dh", 0x40: "ec-edwards", 0x41: "ec-montgomery",
	pkcs11.CKK_SHA256_HMAC: "sha256-hmac", pkcs11.CKK_SHA_1_HMAC: "sha1-hmac",
}

func keyTypeName(t uint) string {
	if n, ok := keyTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("ckk-0x%x", t)
}

// Inventory lists the token's secret keys, key pairs, lone public keys and
// certificates (token objects only), sorted by label then id, each with its
// disposition for a move to another HSM.
func (k *KeyToken) Inventory(_ context.Context) ([]KeyEntry, error) {
	var out []KeyEntry
	label := k.uri.Object
	id := k.uri.ID
	secrets, err := k.find(pkcs11.CKO_SECRET_KEY, label, id, true)
	if err != nil {
		return nil, err
	}
	for _, h := range secrets {
		e, err := k.describe(h, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	privs, err := k.find(pkcs11.CKO_PRIVATE_KEY, label, id, true)
	if err != nil {
		return nil, err
	}
	pubs, err := k.find(pkcs11.CKO_PUBLIC_KEY, label, id, true)
	if err != nil {
		return nil, err
	}
	pubEntries := make([]KeyEntry, 0, len(pubs))
	for _, h := range pubs {
		e, err := k.describe(h, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return nil, err
		}
		pubEntries = append(pubEntries, e)
	}
	used := make([]bool, len(pubEntries))
	for _, h := range privs {
		e, err := k.describe(h, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return nil, err
		}
		// The public half is the public key with the same id (the PKCS#11
		// convention), or failing an id, the same label.
		for i := range pubEntries {
			p := &pubEntries[i]
			if used[i] || p.keyType != e.keyType {
				continue
			}
			if (e.ID != "" && p.ID == e.ID) || (e.ID == "" && p.ID == "" && p.Label == e.Label) {
				used[i] = true
				e.Kind, e.pub, e.pubUsage, e.canVerify = KindKeyPair, p.obj, p.usage, p.canVerify
				if e.Bits == 0 {
					e.Bits = p.Bits
				}
				e.Usage = mergeUsage(e.Usage, p.Usage)
				break
			}
		}
		out = append(out, e)
	}
	for i, p := range pubEntries {
		if !used[i] {
			out = append(out, p)
		}
	}
	certs, err := k.find(pkcs11.CKO_CERTIFICATE, label, id, true)
	if err != nil {
		return nil, err
	}
	for _, h := range certs {
		e, err := k.describe(h, pkcs11.CKO_CERTIFICATE)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	for i := range out {
		setDisposition(&out[i])
		typ := map[string]string{KindSecret: "secret-key", KindKeyPair: "private", KindPrivate: "private", KindPublic: "public", KindCertificate: "cert"}[out[i].Kind]
		out[i].URI = k.keyURI(out[i].Label, out[i].RawID(), typ)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Label != out[j].Label {
			return out[i].Label < out[j].Label
		}
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Kind < out[j].Kind
	})
	return out, nil
}

func mergeUsage(a, b []string) []string {
	seen := map[string]bool{}
	for _, u := range a {
		seen[u] = true
	}
	for _, u := range b {
		seen[u] = true
	}
	var out []string
	for _, n := range usageNames {
		if seen[n.name] {
			out = append(out, n.name)
		}
	}
	return out
}

// describe reads the public attributes of one object.
func (k *KeyToken) describe(h pkcs11.ObjectHandle, class uint) (KeyEntry, error) {
	e := KeyEntry{obj: h, usage: map[uint]bool{}, Usage: []string{}}
	what := fmt.Sprintf("describe object %d on token %q", h, k.Label())
	lab, _, err := k.attr(h, pkcs11.CKA_LABEL)
	if err != nil {
		return e, fmt.Errorf("%s: %w", what, err)
	}
	e.Label = string(lab)
	id, _, err := k.attr(h, pkcs11.CKA_ID)
	if err != nil {
		return e, fmt.Errorf("%s: %w", what, err)
	}
	e.ID = hex.EncodeToString(id)
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		e.Kind = KindSecret
	case pkcs11.CKO_PRIVATE_KEY:
		e.Kind = KindPrivate
	case pkcs11.CKO_PUBLIC_KEY:
		e.Kind = KindPublic
	case pkcs11.CKO_CERTIFICATE:
		e.Kind, e.Type = KindCertificate, "x509"
		return e, nil
	}
	kt, ok, err := k.ulongAttr(h, pkcs11.CKA_KEY_TYPE)
	if err != nil {
		return e, fmt.Errorf("%s: %w", what, err)
	}
	if ok {
		e.keyType = kt
		e.Type = keyTypeName(kt)
	}
	for _, u := range usageNames {
		on, err := k.boolAttr(h, u.attr)
		if err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		}
		if on {
			e.usage[u.attr] = true
			e.Usage = append(e.Usage, u.name)
		}
	}
	e.canSign = e.usage[pkcs11.CKA_SIGN] && class != pkcs11.CKO_SECRET_KEY
	e.canVerify = e.usage[pkcs11.CKA_VERIFY] && class == pkcs11.CKO_PUBLIC_KEY
	if class != pkcs11.CKO_PUBLIC_KEY {
		if e.Extractable, err = k.boolAttr(h, pkcs11.CKA_EXTRACTABLE); err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		}
		if e.Sensitive, err = k.boolAttr(h, pkcs11.CKA_SENSITIVE); err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		}
	}
	switch {
	case class == pkcs11.CKO_SECRET_KEY:
		if n, ok, err := k.ulongAttr(h, pkcs11.CKA_VALUE_LEN); err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		} else if ok {
			e.Bits = int(n) * 8
		}
	case kt == pkcs11.CKK_RSA:
		if m, ok, err := k.attr(h, pkcs11.CKA_MODULUS); err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		} else if ok {
			e.Bits = bitLen(m)
		}
	case kt == pkcs11.CKK_EC || kt == 0x40:
		p, ok, err := k.attr(h, pkcs11.CKA_EC_PARAMS)
		if err != nil {
			return e, fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			e.ecParams = p
			e.Curve, e.Bits = curveName(p)
		}
	}
	return e, nil
}

func bitLen(b []byte) int {
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0
	}
	n := (len(b) - 1) * 8
	for c := b[0]; c != 0; c >>= 1 {
		n++
	}
	return n
}

var curves = []struct {
	oid  asn1.ObjectIdentifier
	name string
	bits int
}{
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}, "P-256", 256},
	{asn1.ObjectIdentifier{1, 3, 132, 0, 34}, "P-384", 384},
	{asn1.ObjectIdentifier{1, 3, 132, 0, 35}, "P-521", 521},
	{asn1.ObjectIdentifier{1, 3, 132, 0, 33}, "P-224", 224},
	{asn1.ObjectIdentifier{1, 3, 101, 112}, "Ed25519", 255},
}

// curveName names a CKA_EC_PARAMS (a DER OID, or a printable curve name for
// Edwards keys).
func curveName(params []byte) (string, int) {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &oid); err == nil && len(rest) == 0 {
		for _, c := range curves {
			if c.oid.Equal(oid) {
				return c.name, c.bits
			}
		}
		return "oid:" + oid.String(), 0
	}
	var name string
	if rest, err := asn1.Unmarshal(params, &name); err == nil && len(rest) == 0 {
		if name == "edwards25519" {
			return "Ed25519", 255
		}
		return name, 0
	}
	return "unknown", 0
}

// setDisposition sets the disposition of an entry.
func setDisposition(e *KeyEntry) {
	switch e.Kind {
	case KindCertificate:
		e.Disposition, e.Why = PublicOnly, "certificate: public data; export-public writes it"
	case KindPublic:
		e.Disposition, e.Why = PublicOnly, "public key without its private key on this token; export-public writes it"
	case KindSecret:
		if e.Extractable {
			e.Disposition, e.Why = Transferable, "extractable: keys copy moves it wrapped under a transport key"
		} else {
			e.Disposition, e.Why = Recreate, "CKA_EXTRACTABLE=false: create a new key on the target and migrate the data with rekey run"
		}
	default: // key pair, lone private key
		switch {
		case e.Extractable:
			e.Disposition, e.Why = Transferable, "extractable private key: keys copy moves it wrapped under an AES-KWP transport key"
		case e.canSign:
			e.Disposition, e.Why = PublicOnly, "signing key that cannot leave the HSM: export-public keeps its public key for old signatures; --create-successor makes the new pair"
		default:
			e.Disposition, e.Why = Recreate, "CKA_EXTRACTABLE=false: create a new key pair on the target and migrate the data with rekey run"
		}
	}
}

// Mechanisms is what a token offers: mechanism type → CKF_* flags.
type Mechanisms map[uint]uint

// Mechanisms lists the token's mechanisms and their flags.
func (k *KeyToken) Mechanisms(_ context.Context) (Mechanisms, error) {
	list, err := k.api.GetMechanismList(k.raw.Slot)
	if err != nil {
		return nil, hsmio.Classify(err, fmt.Sprintf("list mechanisms of token %q", k.Label()))
	}
	m := Mechanisms{}
	for _, mech := range list {
		info, err := k.api.GetMechanismInfo(k.raw.Slot, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech.Mechanism, nil)})
		if err != nil {
			m[mech.Mechanism] = 0
			continue
		}
		m[mech.Mechanism] = info.Flags
	}
	return m, nil
}

// Has reports whether the token offers mech with every flag in flags.
func (m Mechanisms) Has(mech, flags uint) bool {
	f, ok := m[mech]
	return ok && f&flags == flags
}

var mechNames = map[uint]string{
	pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN: "RSA-PKCS-KEY-PAIR-GEN", pkcs11.CKM_RSA_PKCS: "RSA-PKCS",
	pkcs11.CKM_RSA_PKCS_OAEP: "RSA-PKCS-OAEP", pkcs11.CKM_RSA_X_509: "RSA-X-509",
	pkcs11.CKM_AES_KEY_GEN: "AES-KEY-GEN", pkcs11.CKM_AES_KEY_WRAP: "AES-KEY-WRAP",
	pkcs11.CKM_AES_KEY_WRAP_PAD: "AES-KEY-WRAP-PAD", pkcs11.CKM_AES_CBC: "AES-CBC",
	pkcs11.CKM_AES_CBC_PAD: "AES-CBC-PAD", pkcs11.CKM_AES_ECB: "AES-ECB", pkcs11.CKM_AES_GCM: "AES-GCM",
	pkcs11.CKM_AES_CMAC: "AES-CMAC", pkcs11.CKM_DES3_CBC: "DES3-CBC", pkcs11.CKM_DES3_CBC_PAD: "DES3-CBC-PAD",
	pkcs11.CKM_DES_CBC: "DES-CBC", pkcs11.CKM_DES_CBC_PAD: "DES-CBC-PAD", pkcs11.CKM_DES_ECB: "DES-ECB",
	pkcs11.CKM_ECDH1_DERIVE: "ECDH1-DERIVE", pkcs11.CKM_EC_KEY_PAIR_GEN: "EC-KEY-PAIR-GEN",
	pkcs11.CKM_SHA256_HMAC: "SHA256-HMAC", pkcs11.CKM_SHA_1_HMAC: "SHA-1-HMAC",
	pkcs11.CKM_GENERIC_SECRET_KEY_GEN: "GENERIC-SECRET-KEY-GEN", pkcs11.CKM_ECDSA: "ECDSA",
	pkcs11.CKM_SHA256_RSA_PKCS: "SHA256-RSA-PKCS",
}

// MechName is a mechanism's name without the CKM_ prefix.
func MechName(m uint) string {
	if n, ok := mechNames[m]; ok {
		return n
	}
	return fmt.Sprintf("0x%08X", m)
}

// WrapNames lists, sorted, the mechanisms that can wrap or unwrap keys,
// with what they can do.
func (m Mechanisms) WrapNames() []string {
	var out []string
	for mech, f := range m {
		var can []string
		if f&pkcs11.CKF_WRAP != 0 {
			can = append(can, "wrap")
		}
		if f&pkcs11.CKF_UNWRAP != 0 {
			can = append(can, "unwrap")
		}
		if len(can) == 0 {
			continue
		}
		out = append(out, MechName(mech)+" ("+strings.Join(can, ", ")+")")
	}
	sort.Strings(out)
	return out
}

// Key transports: how keys travel from the source to the target token.
const (
	// TransportAuto picks aes-kwp when both tokens offer it, else rsa-oaep.
	TransportAuto = "auto"
	// TransportRSAOAEP: an RSA key pair generated on the target; the source
	// wraps each secret key with RSA-OAEP under its public half. Secret keys
	// only (private keys are too long for RSA-OAEP).
	TransportRSAOAEP = "rsa-oaep"
	// TransportAESKWP: an AES-256 key generated on the target reaches the
	// source wrapped with RSA-OAEP under a key pair generated on the source
	// for this run; each key then travels under AES-KWP (RFC 5649). Moves
	// private keys too.
	TransportAESKWP = "aes-kwp"
)

// ErrNoTransport means the two tokens have no key transport in common.
var ErrNoTransport = errors.New("no key transport mechanism offered by both tokens")

type need struct {
	side  string // "source" or "target"
	mech  uint
	flags uint
}

func transportNeeds(t string) []need {
	switch t {
	case TransportRSAOAEP:
		return []need{
			{"target", pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR},
			{"source", pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKF_WRAP},
			{"target", pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKF_UNWRAP},
		}
	case TransportAESKWP:
		return []need{
			{"source", pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR},
			{"target", pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKF_WRAP},
			{"source", pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKF_UNWRAP},
			{"target", pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE},
			{"source", pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKF_WRAP},
			{"target", pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKF_UNWRAP},
		}
	}
	return nil
}

// missing lists what transport t needs and src/dst lack.
func missing(t string, src, dst Mechanisms) []string {
	var out []string
	for _, n := range transportNeeds(t) {
		m := src
		if n.side == "target" {
			m = dst
		}
		if !m.Has(n.mech, n.flags) {
			what := map[uint]string{pkcs11.CKF_WRAP: "wrap", pkcs11.CKF_UNWRAP: "unwrap", pkcs11.CKF_GENERATE: "generate", pkcs11.CKF_GENERATE_KEY_PAIR: "generate key pair"}[n.flags]
			out = append(out, fmt.Sprintf("%s cannot %s with %s", n.side, what, MechName(n.mech)))
		}
	}
	return out
}

// ChooseTransport picks the key transport from src to dst: want is auto,
// rsa-oaep or aes-kwp. The error wraps ErrNoTransport and keys.ErrMechanism
// and lists what each token offers.
func ChooseTransport(srcName string, src Mechanisms, dstName string, dst Mechanisms, want string) (string, error) {
	if want == "" {
		want = TransportAuto
	}
	var tries []string
	switch want {
	case TransportAuto:
		tries = []string{TransportAESKWP, TransportRSAOAEP}
	case TransportAESKWP, TransportRSAOAEP:
		tries = []string{want}
	default:
		return "", fmt.Errorf("%w: unknown transport %q (want auto, %s or %s)", keys.ErrMechanism, want, TransportAESKWP, TransportRSAOAEP)
	}
	var why []string
	for _, t := range tries {
		m := missing(t, src, dst)
		if len(m) == 0 {
			return t, nil
		}
		why = append(why, t+": "+strings.Join(m, "; "))
	}
	list := func(m Mechanisms) string {
		n := m.WrapNames()
		if len(n) == 0 {
			return "none"
		}
		return strings.Join(n, ", ")
	}
	return "", fmt.Errorf("%w (%w): %s. Source token %q offers for wrapping: %s. Target token %q offers: %s. Nothing was copied; move these keys with the HSM vendor's backup tools, or re-create them on the target",
		ErrNoTransport, keys.ErrMechanism, strings.Join(why, "; "), srcName, list(src), dstName, list(dst))
}
