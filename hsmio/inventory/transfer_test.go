package inventory

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

// The tokens ksrc, kdst and kdst2 are created by TestMain (main_test.go);
// the keys on them by keyFixtures, once per process.

const fixturePIN = "1234" // TestMain's user PIN, also in $REKEY_TEST_PIN

// knownAES is the value of the extractable AES test key, so the test can
// compute its check value without any HSM.
var knownAES = bytes.Repeat([]byte{0x42, 0x17}, 16)

var (
	fixturesOnce sync.Once
	fixturesErr  error
)

func keyFixtures(t *testing.T) {
	t.Helper()
	fixturesOnce.Do(func() {
		certDER, err := selfSigned()
		if err != nil {
			fixturesErr = err
			return
		}
		fixturesErr = softhsm.CreateObjects("ksrc", fixturePIN, []softhsm.ObjectSpec{
			{Label: "aes-x", Kind: "aes", Extractable: true, Encrypt: true, Value: knownAES},
			{Label: "aes-n", Kind: "aes", Encrypt: true},
			{Label: "aes-wrap-only-x", Kind: "aes", Extractable: true, Wrap: true}, // checked by wrapping a fixed key
			{Label: "aes-opaque-x", Kind: "aes", Extractable: true},                // allows nothing: cannot be checked on the target
			{Label: "gen-x", Kind: "generic", Extractable: true, Sign: true},
			{Label: "gen-n", Kind: "generic", Sign: true},
			{Label: "rsa-x", Kind: "rsa", Extractable: true, Sign: true},
			{Label: "rsa-n", Kind: "rsa", Sign: true},
			{Label: "rsa-dec-n", Kind: "rsa", Encrypt: true},
			{Label: "ec-x", Kind: "ec", Extractable: true, Sign: true},
			{Label: "ec-n", Kind: "ec", Sign: true},
			{Label: "clash", Kind: "aes", Extractable: true, Encrypt: true},
			{Label: "cert-1", Kind: "cert", CertDER: certDER},
		})
		if fixturesErr != nil {
			return
		}
		// Same label on the target, another key: must be reported, never
		// overwritten.
		fixturesErr = softhsm.CreateObjects("kdst", fixturePIN, []softhsm.ObjectSpec{
			{Label: "clash", Kind: "aes", Encrypt: true},
		})
	})
	if fixturesErr != nil {
		t.Fatal("key fixtures:", fixturesErr)
	}
}

func selfSigned() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "rekey test"},
		NotBefore: time.Unix(1700000000, 0), NotAfter: time.Unix(1900000000, 0)}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
}

func openKT(t *testing.T, token string) *KeyToken {
	t.Helper()
	kt, err := OpenKeyToken(context.Background(), "pkcs11:token="+token+"?pin-source=env:REKEY_TEST_PIN")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kt.Close() })
	return kt
}

func byLabel(inv []KeyEntry) map[string]KeyEntry {
	m := map[string]KeyEntry{}
	for _, e := range inv {
		m[e.Label+"/"+e.Kind] = e
	}
	return m
}

func TestKeysInventoryClassifies(t *testing.T) {
	keyFixtures(t)
	src := openKT(t, "ksrc")
	inv, err := src.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := byLabel(inv)
	for _, tc := range []struct {
		key, typ, disp string
		bits           int
		extractable    bool
		usage          string
	}{
		{"aes-x/secret-key", "aes", Transferable, 256, true, "encrypt,decrypt"},
		{"aes-n/secret-key", "aes", Recreate, 256, false, "encrypt,decrypt"},
		{"gen-x/secret-key", "generic-secret", Transferable, 256, true, "sign,verify"},
		{"gen-n/secret-key", "generic-secret", Recreate, 256, false, "sign,verify"},
		{"rsa-x/key-pair", "rsa", Transferable, 2048, true, "sign,verify"},
		{"rsa-n/key-pair", "rsa", PublicOnly, 2048, false, "sign,verify"},
		{"rsa-dec-n/key-pair", "rsa", Recreate, 2048, false, "encrypt,decrypt"},
		{"ec-x/key-pair", "ec", Transferable, 256, true, "sign,verify"},
		{"ec-n/key-pair", "ec", PublicOnly, 256, false, "sign,verify"},
		{"cert-1/certificate", "x509", PublicOnly, 0, false, ""},
	} {
		e, ok := m[tc.key]
		if !ok {
			t.Errorf("%s missing from the inventory", tc.key)
			continue
		}
		if e.Type != tc.typ || e.Disposition != tc.disp || e.Bits != tc.bits || e.Extractable != tc.extractable || strings.Join(e.Usage, ",") != tc.usage {
			t.Errorf("%s: got type %s, %s, %d bits, extractable %v, usage %v; want %s, %s, %d, %v, %s",
				tc.key, e.Type, e.Disposition, e.Bits, e.Extractable, e.Usage, tc.typ, tc.disp, tc.bits, tc.extractable, tc.usage)
		}
		if e.ID != hex.EncodeToString([]byte(strings.Split(tc.key, "/")[0])) {
			t.Errorf("%s: id %s", tc.key, e.ID)
		}
	}
	if e := m["ec-n/key-pair"]; e.Curve != "P-256" {
		t.Errorf("ec-n curve %q", e.Curve)
	}
	// A URI naming one key narrows the inventory to it.
	one, err := OpenKeyToken(context.Background(), "pkcs11:token=ksrc;object=gen-n?pin-source=env:REKEY_TEST_PIN")
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	got, err := one.Inventory(context.Background())
	if err != nil || len(got) != 1 || got[0].Label != "gen-n" {
		t.Fatalf("inventory of object=gen-n: %v %+v", err, got)
	}
}

// secretReads lists the calls that asked a token for key material.
func secretReads(calls []Call) []Call {
	var bad []Call
	for _, c := range calls {
		if c.Func != "C_GetAttributeValue" {
			continue
		}
		for _, a := range c.Attrs {
			if SecretAttr(a) {
				bad = append(bad, c)
			}
		}
	}
	return bad
}

// tokenObjects lists the token objects of a token ("<class> <label>", sorted)
// as a new process finds them in the token store: this process's view can
// miss an object that a failed call left in the store.
func tokenObjects(t *testing.T, label string) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envListObjects+"="+label)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		t.Fatalf("list the token objects of %q in a new process: %v", label, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 1 && lines[0] == "" {
		lines = nil
	}
	sort.Strings(lines)
	return lines
}

// added is after less before (both sorted, as multisets); removed the
// reverse.
func added(before, after []string) (add, removed []string) {
	n := map[string]int{}
	for _, l := range before {
		n[l]++
	}
	for _, l := range after {
		if n[l] > 0 {
			n[l]--
		} else {
			add = append(add, l)
		}
	}
	for l, k := range n {
		for ; k > 0; k-- {
			removed = append(removed, l)
		}
	}
	sort.Strings(add)
	sort.Strings(removed)
	return add, removed
}

func TestKeysCopyMovesTransferableUnderWrap(t *testing.T) {
	keyFixtures(t)
	ctx := context.Background()
	srcBefore, dstBefore := tokenObjects(t, "ksrc"), tokenObjects(t, "kdst")
	src, dst := openKT(t, "ksrc"), openKT(t, "kdst")
	var mu sync.Mutex
	var calls []Call
	rec := func(c Call) { mu.Lock(); calls = append(calls, c); mu.Unlock() }
	src.Trace(rec)
	dst.Trace(rec)

	rep, err := Copy(ctx, src, dst, CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Transport, TransportAESKWP) {
		t.Errorf("transport %q, want aes-kwp (both SoftHSM tokens offer it)", rep.Transport)
	}
	if len(rep.Cleanup) != 0 {
		t.Errorf("transport keys not destroyed: %v", rep.Cleanup)
	}
	status := map[string]CopyResult{}
	for _, r := range rep.Results {
		status[r.Key.Label+"/"+r.Key.Kind] = r
	}
	want := map[string]string{
		"aes-x/secret-key": schemas.StatusMigrated, "gen-x/secret-key": schemas.StatusMigrated,
		"aes-wrap-only-x/secret-key": schemas.StatusMigrated,
		"rsa-x/key-pair":             schemas.StatusMigrated, "ec-x/key-pair": schemas.StatusMigrated,
		"clash/secret-key": schemas.StatusFailed, "aes-opaque-x/secret-key": schemas.StatusFailed,
		"aes-n/secret-key": schemas.StatusSkipped, "gen-n/secret-key": schemas.StatusSkipped,
		"rsa-n/key-pair": schemas.StatusSkipped, "rsa-dec-n/key-pair": schemas.StatusSkipped,
		"ec-n/key-pair": schemas.StatusSkipped, "cert-1/certificate": schemas.StatusSkipped,
	}
	for k, w := range want {
		r, ok := status[k]
		if !ok {
			t.Errorf("%s: no result", k)
			continue
		}
		if r.Status != w {
			t.Errorf("%s: status %s (%v), want %s", k, r.Status, r.Err, w)
		}
		if w == schemas.StatusMigrated && r.CheckValue == "" {
			t.Errorf("%s: migrated without a check value", k)
		}
	}
	if r := status["aes-n/secret-key"]; !strings.HasPrefix(r.Note, Recreate) {
		t.Errorf("aes-n note %q, want it listed as re-create", r.Note)
	}
	if r := status["clash/secret-key"]; r.Err == nil || !strings.Contains(r.Err.Error(), "label clash") || !strings.Contains(r.Err.Error(), `"kdst"`) {
		t.Errorf("clash: %v", r.Err)
	}
	// The check value is the key's own: computed here from the known value.
	blk, _ := aes.NewCipher(knownAES)
	kcv := make([]byte, 16)
	blk.Encrypt(kcv, make([]byte, 16))
	if got, w := status["aes-x/secret-key"].CheckValue, "aes-ecb:"+hex.EncodeToString(kcv[:8]); got != w {
		t.Errorf("aes-x check value %s, want %s", got, w)
	}
	if got := status["aes-wrap-only-x/secret-key"].CheckValue; !strings.HasPrefix(got, "aes-kw:") {
		t.Errorf("wrap-only key check value %q, want aes-kw", got)
	}
	if r := status["aes-opaque-x/secret-key"]; r.Err == nil || !strings.Contains(r.Err.Error(), "the copy was destroyed") {
		t.Errorf("aes-opaque-x: %v", r.Err)
	}

	// No call on either token asked for a key's value.
	if bad := secretReads(calls); len(bad) > 0 {
		t.Fatalf("key material was requested: %+v", bad)
	}
	// Each moved key left its token exactly once, through C_WrapKey; a
	// recorder that saw nothing would make the check above vacuous.
	srcInv, err := src.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sm := byLabel(srcInv)
	wrapped := map[uint]int{}
	reads := 0
	for _, c := range calls {
		switch {
		case c.Func == "C_WrapKey" && c.Token == "ksrc":
			wrapped[c.Object]++
		case c.Func == "C_GetAttributeValue":
			reads++
		}
	}
	for k, w := range want {
		n := wrapped[uint(sm[k].obj)]
		if (w == schemas.StatusMigrated && n != 1) || (w == schemas.StatusSkipped && n != 0) {
			t.Errorf("%s (%s) was wrapped %d times on the source", k, w, n)
		}
	}
	if reads == 0 {
		t.Fatal("the recorder saw no C_GetAttributeValue call")
	}

	// The copies: same label, id and usage; sensitive and not extractable.
	inv, err := dst.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dm := byLabel(inv)
	if _, ok := dm["aes-opaque-x/secret-key"]; ok {
		t.Error("the unverifiable copy of aes-opaque-x is still on the target")
	}
	for _, k := range []string{"aes-x/secret-key", "gen-x/secret-key", "rsa-x/key-pair", "ec-x/key-pair"} {
		d, s := dm[k], sm[k]
		// SoftHSM shows no CKA_VALUE_LEN for unwrapped secret keys (0 bits);
		// their check values matched, so the length did too.
		sameBits := d.Bits == s.Bits || (d.Kind == KindSecret && d.Bits == 0)
		if d.ID != s.ID || strings.Join(d.Usage, ",") != strings.Join(s.Usage, ",") || !sameBits || d.Extractable || !d.Sensitive {
			t.Errorf("%s on target: %+v; source %+v", k, d, s)
		}
	}
	for _, k := range []struct {
		label string
		class uint
	}{{"aes-x", pkcs11.CKO_SECRET_KEY}, {"gen-x", pkcs11.CKO_SECRET_KEY}, {"rsa-x", pkcs11.CKO_PRIVATE_KEY}, {"ec-x", pkcs11.CKO_PRIVATE_KEY}} {
		readable, err := softhsm.ValueReadable("kdst", fixturePIN, k.label, k.class)
		if err != nil || readable {
			t.Errorf("%s on the target: value readable %v (%v)", k.label, readable, err)
		}
	}
	// No transport key is left on either token.
	for _, kt := range []*KeyToken{src, dst} {
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			hs, err := kt.find(class, "", nil, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range hs {
				if l, _, _ := kt.attr(h, pkcs11.CKA_LABEL); strings.HasPrefix(string(l), "rekey-transport-") {
					t.Errorf("transport object %q left on %q", l, kt.Label())
				}
			}
		}
	}

	// The target's token store holds exactly what it held before and the
	// copied keys (a key pair: its private and public objects); nothing
	// else, persistent or unlabeled, was left there, and the source's is
	// unchanged: every other object of the run was a session object.
	dstAfter := tokenObjects(t, "kdst")
	add, removed := added(dstBefore, dstAfter)
	wantAdded := []string{`private-key "ec-x"`, `private-key "rsa-x"`, `public-key "ec-x"`, `public-key "rsa-x"`,
		`secret-key "aes-wrap-only-x"`, `secret-key "aes-x"`, `secret-key "gen-x"`}
	if strings.Join(add, "; ") != strings.Join(wantAdded, "; ") || len(removed) > 0 {
		t.Errorf("target token objects: added %q, removed %q; want added exactly the copied keys %q", add, removed, wantAdded)
	}
	if got := tokenObjects(t, "ksrc"); strings.Join(got, "; ") != strings.Join(srcBefore, "; ") {
		t.Errorf("source token objects changed: before %q, after %q", srcBefore, got)
	}

	// A rerun changes nothing: the copied keys are skipped, the clash is
	// still reported.
	before := len(inv)
	calls = nil
	rep2, err := Copy(ctx, src, dst, CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep2.Results {
		k := r.Key.Label + "/" + r.Key.Kind
		w := want[k]
		if w == schemas.StatusMigrated {
			w = schemas.StatusSkipped
		}
		if r.Status != w {
			t.Errorf("rerun %s: %s (%v), want %s", k, r.Status, r.Err, w)
		}
		if w == schemas.StatusSkipped && status[k].Status == schemas.StatusMigrated && r.CheckValue != status[k].CheckValue {
			t.Errorf("rerun %s: check value %s, first run %s", k, r.CheckValue, status[k].CheckValue)
		}
	}
	inv2, _ := dst.Inventory(ctx)
	if len(inv2) != before {
		t.Errorf("rerun changed the target: %d entries, was %d", len(inv2), before)
	}
	if got := tokenObjects(t, "kdst"); strings.Join(got, "; ") != strings.Join(dstAfter, "; ") {
		t.Errorf("rerun changed the target's token objects: %q, after the first run %q", got, dstAfter)
	}
	if bad := secretReads(calls); len(bad) > 0 {
		t.Fatalf("rerun requested key material: %+v", bad)
	}
}

func TestKeysCopyRSAOAEPMovesSecretsOnly(t *testing.T) {
	keyFixtures(t)
	ctx := context.Background()
	src, dst := openKT(t, "ksrc"), openKT(t, "kdst2")
	rep, err := Copy(ctx, src, dst, CopyOptions{Transport: TransportRSAOAEP})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Transport, "rsa-oaep-sha1") {
		t.Errorf("transport %q: SoftHSM accepts OAEP with SHA-1 only", rep.Transport)
	}
	for _, r := range rep.Results {
		switch r.Key.Label {
		case "aes-x", "gen-x", "clash", "aes-wrap-only-x": // kdst2 has no clash
			if r.Status != schemas.StatusMigrated {
				t.Errorf("%s: %s %v", r.Key.Label, r.Status, r.Err)
			}
		case "rsa-x", "ec-x":
			if r.Status != schemas.StatusFailed || !strings.Contains(r.Err.Error(), "aes-kwp") {
				t.Errorf("%s: %s %v, want failed naming aes-kwp", r.Key.Label, r.Status, r.Err)
			}
		}
	}
}

// hideMechs is a fake token mechanism list: the real token without the
// mechanisms named, to test the refusal on tokens SoftHSM cannot imitate.
type hideMechs struct {
	p11API
	hide map[uint]bool
}

func (h *hideMechs) GetMechanismList(slot uint) ([]*pkcs11.Mechanism, error) {
	all, err := h.p11API.GetMechanismList(slot)
	var out []*pkcs11.Mechanism
	for _, m := range all {
		if !h.hide[m.Mechanism] {
			out = append(out, m)
		}
	}
	return out, err
}

func TestKeysCopyRefusesWithoutCommonTransport(t *testing.T) {
	keyFixtures(t)
	ctx := context.Background()
	src, dst := openKT(t, "ksrc"), openKT(t, "kdst2")
	dst.api = &hideMechs{p11API: dst.api, hide: map[uint]bool{pkcs11.CKM_RSA_PKCS_OAEP: true, pkcs11.CKM_AES_KEY_WRAP_PAD: true}}
	var created []Call
	dst.api = &tracedAPI{p11API: dst.api, token: "kdst2", f: func(c Call) {
		if c.Func == "C_GenerateKey" || c.Func == "C_GenerateKeyPair" || c.Func == "C_CreateObject" || c.Func == "C_UnwrapKey" {
			created = append(created, c)
		}
	}}
	_, err := Copy(ctx, src, dst, CopyOptions{})
	if !errors.Is(err, ErrNoTransport) || !errors.Is(err, keys.ErrMechanism) {
		t.Fatalf("got %v, want ErrNoTransport", err)
	}
	for _, s := range []string{`"ksrc" offers`, "RSA-PKCS-OAEP (wrap, unwrap)", `"kdst2" offers`, "AES-KEY-WRAP (wrap, unwrap)", "target cannot unwrap with RSA-PKCS-OAEP"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal does not say %q: %v", s, err)
		}
	}
	if len(created) > 0 {
		t.Errorf("refused copy still created objects on the target: %+v", created)
	}
}

func TestKeysExportPublicAndSuccessor(t *testing.T) {
	keyFixtures(t)
	ctx := context.Background()
	src, dst := openKT(t, "ksrc"), openKT(t, "kdst")
	var calls []Call
	src.Trace(func(c Call) { calls = append(calls, c) })
	inv, err := src.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("signed before the migration")
	got := map[string]PublicExport{}
	for _, x := range src.ExportPublic(ctx, inv) {
		if x.Err != nil {
			t.Fatal(x.Err)
		}
		got[x.Key.Label] = x
	}
	for _, l := range []string{"rsa-n", "ec-n", "rsa-x", "ec-x", "cert-1"} {
		if _, ok := got[l]; !ok {
			t.Errorf("%s not exported", l)
		}
	}
	for _, l := range []string{"rsa-dec-n", "aes-x", "gen-x"} {
		if _, ok := got[l]; ok {
			t.Errorf("%s exported; only signing pairs, public keys and certificates are", l)
		}
	}
	// An old signature verifies with the exported key.
	for _, l := range []string{"rsa-n", "ec-n"} {
		sig, err := softhsm.Sign("ksrc", fixturePIN, l, msg)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(got[l].PEM)
		pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256(msg)
		switch p := pub.(type) {
		case *rsa.PublicKey:
			err = rsa.VerifyPKCS1v15(p, 5 /* crypto.SHA256 */, d[:], sig)
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(p, d[:], sig) {
				err = errors.New("ECDSA signature does not verify")
			}
		}
		if err != nil {
			t.Errorf("%s: %v", l, err)
		}
		fp := sha256.Sum256(blk.Bytes)
		if got[l].Fingerprint != "sha256:"+hex.EncodeToString(fp[:]) || !bytes.Contains(got[l].PEM, []byte("Label: "+l+"\n")) {
			t.Errorf("%s: fingerprint %s or label header wrong:\n%s", l, got[l].Fingerprint, got[l].PEM)
		}
		var jwk map[string]any
		if err := json.Unmarshal(got[l].JWK, &jwk); err != nil || jwk["label"] != l || jwk["kid"] != got[l].KeyID || jwk["fingerprint"] != got[l].Fingerprint {
			t.Errorf("%s: JWK %s (%v)", l, got[l].JWK, err)
		}
	}
	// The recorder does see a CKA_VALUE request when one is made: export
	// reads the certificate's (public) value, and nothing else's.
	certReads := secretReads(calls)
	if len(certReads) != 1 || certReads[0].Object != uint(byLabel(inv)["cert-1/certificate"].obj) {
		t.Fatalf("CKA_VALUE reads during export: %+v, want exactly the certificate's", certReads)
	}
	if _, _, err := src.attr(byLabel(inv)["aes-x/secret-key"].obj, pkcs11.CKA_VALUE); err == nil {
		t.Fatal("attr read CKA_VALUE of a secret key")
	}

	for _, l := range []string{"rsa-n/key-pair", "ec-n/key-pair"} {
		e := byLabel(inv)[l]
		s, err := CreateSuccessor(ctx, e, dst, "-next")
		if err != nil {
			t.Fatal(err)
		}
		if !s.Created || s.Label != e.Label+"-next" || s.Fingerprint == "" || s.Fingerprint == got[e.Label].Fingerprint {
			t.Errorf("successor of %s: %+v", l, s)
		}
		again, err := CreateSuccessor(ctx, e, dst, "-next")
		if err != nil || again.Created || again.Fingerprint != s.Fingerprint {
			t.Errorf("second successor of %s: %+v %v, want the existing one", l, again, err)
		}
		d := byLabel(mustInv(t, dst))[e.Label+"-next/key-pair"]
		if d.Extractable || !d.Sensitive || d.Type != e.Type || d.Bits != e.Bits || !d.canSign {
			t.Errorf("successor %s on the target: %+v", e.Label+"-next", d)
		}
	}
}

func mustInv(t *testing.T, k *KeyToken) []KeyEntry {
	t.Helper()
	inv, err := k.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}
