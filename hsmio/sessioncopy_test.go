package hsmio_test

// Session copies of AES KEKs (issue 14, lever 5; sessioncopy.go): the copy
// is what operations use, it is a sensitive, non-extractable session
// object, a key that forbids copies uses its token object and the
// preflight says so, a lost holder session is replaced, and nothing is
// left on the token.

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/hsmio/faultpkcs11"
	"rekey/hsmio/softhsm"
	"rekey/providers/keys"
	"rekey/schemas"
)

// rawSrc is a logged-in session on "src" straight through SoftHSM2 (not
// through any hsmio pool): it sees the process's session objects.
func rawSrc(t *testing.T) (*pkcs11.Ctx, pkcs11.SessionHandle) {
	t.Helper()
	raw, err := hsmio.OpenRawToken(hsmio.URI{Token: "src", ModulePath: softhsm.Module, PinSource: "env:REKEY_TEST_PIN"})
	if err != nil {
		t.Fatal(err)
	}
	sh, err := raw.Ctx.OpenSession(raw.Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Ctx.CloseSession(sh) })
	return raw.Ctx, sh
}

// objects lists the handles of the secret keys on "src" that match tmpl.
func objects(t *testing.T, tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	p, sh := rawSrc(t)
	tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY))
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.FindObjectsFinal(sh) }()
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := p.FindObjects(sh, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) == 0 {
			return all
		}
		all = append(all, objs...)
	}
}

// tokenObjects counts the secret keys stored on "src".
func tokenObjects(t *testing.T) int {
	return len(objects(t, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)))
}

// sessionCopies counts the session copies the process has on "src" (of
// the key with CKA_ID id, if given: a copy keeps its key's id).
func sessionCopies(t *testing.T, id ...string) int {
	t.Helper()
	p, sh := rawSrc(t)
	n := 0
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}
	for _, i := range id {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, i))
	}
	for _, h := range objects(t, tmpl...) {
		a, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err == nil && strings.HasPrefix(string(a[0].Value), hsmio.CopyLabelPrefix) {
			n++
		}
	}
	return n
}

// flags reads an object's boolean attributes through a session of its own.
func flags(t *testing.T, h pkcs11.ObjectHandle) (token, sensitive, extractable bool) {
	t.Helper()
	p, sh := rawSrc(t)
	a, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	b := func(i int) bool { return len(a[i].Value) > 0 && a[i].Value[0] != 0 }
	return b(0), b(1), b(2)
}

func handleCheck(checks []keys.Check) string {
	for _, c := range checks {
		if strings.HasPrefix(c.Name, "key object used for ") {
			return c.Info
		}
	}
	return ""
}

// roundTrip wraps a 32-byte DEK with k and unwraps it again.
func roundTrip(t *testing.T, k keys.KEK, id string) {
	t.Helper()
	dek := mustDEK(t)
	w, err := k.Wrap(t.Context(), keys.ByID(id), dek)
	if err != nil {
		t.Fatalf("wrap with %s: %v", k.Mechanism(), err)
	}
	got, err := k.Unwrap(t.Context(), keys.ByID(id), k.Mechanism(), w)
	if err != nil {
		t.Fatalf("unwrap with %s: %v", k.Mechanism(), err)
	}
	if !bytes.Equal(got.Bytes(), dek.Bytes()) {
		t.Fatal("round trip changed the DEK")
	}
}

// TestSessionCopyIsUsed: an AES KEK's AES-GCM (crypto11) and its raw calls
// work on a session copy: crypto11's key, found on crypto11's own sessions,
// reads CKA_TOKEN false, and so does the raw calls' handle read through an
// unrelated session; the copy is as sensitive and non-extractable as the
// key; the preflight says a session copy is used. Then the token object
// is deleted under the open keys, and both wraps still work: they never
// touch it. (Run again, -count=2, the key is made again: opening it
// replaces the copy of the deleted key.)
func TestSessionCopyIsUsed(t *testing.T) {
	ctx := t.Context()
	before := tokenObjects(t)
	if err := softhsm.CreateKey("src", pin, softhsm.KeySpec{Label: "kek-ephemeral"}); err != nil {
		t.Fatal(err)
	}
	kgcm, err := hsmio.Open(ctx, uri("src", "kek-ephemeral"), keys.Options{Wrap: schemas.WrapAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	kkwp, err := hsmio.Open(ctx, uri("src", "kek-ephemeral"), keys.Options{Wrap: schemas.WrapAESKWP})
	if err != nil {
		t.Fatal(err)
	}
	ko, err := hsmio.InspectKey(ctx, kgcm)
	if err != nil {
		t.Fatal(err)
	}
	if !ko.Copy || ko.Token || !ko.Sensitive || ko.Extractable || !strings.HasPrefix(ko.Label, hsmio.CopyLabelPrefix) {
		t.Fatalf("crypto11's key: %+v; want a sensitive, non-extractable session copy", ko)
	}
	if ko.Handle == 0 {
		t.Fatal("the raw calls do not use the copy crypto11 uses")
	}
	if tok, sens, ext := flags(t, ko.Handle); tok || !sens || ext {
		t.Fatalf("the copy read from another session: CKA_TOKEN %v, CKA_SENSITIVE %v, CKA_EXTRACTABLE %v", tok, sens, ext)
	}
	if ko2, err := hsmio.InspectKey(ctx, kkwp); err != nil || ko2.Handle != ko.Handle {
		t.Fatalf("two KEKs of one key use copies %d and %d (%v): want one", ko.Handle, ko2.Handle, err)
	}
	if info := handleCheck(kgcm.Preflight(ctx, true, true)); !strings.HasPrefix(info, "session copy of the KEK") {
		t.Fatalf("preflight: %q", info)
	}
	if f := failed(kkwp.Preflight(ctx, true, true)); f != "" {
		t.Fatal(f)
	}
	roundTrip(t, kgcm, "c1")
	roundTrip(t, kkwp, "c1")

	orig := objects(t, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "kek-ephemeral"))
	if len(orig) != 1 {
		t.Fatalf("%d token objects kek-ephemeral", len(orig))
	}
	p, sh := rawSrc(t)
	if err := p.DestroyObject(sh, orig[0]); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, kgcm, "c2")
	roundTrip(t, kkwp, "c2")
	w, err := kgcm.Wrap(ctx, keys.ByID("c3"), mustDEK(t))
	if err != nil {
		t.Fatal(err)
	}
	if after := tokenObjects(t); after != before {
		t.Fatalf("the token holds %d secret keys, %d before the test: the copies are stored", after, before)
	}
	// A new key under the same label: a KEK opened now copies it, not
	// the deleted one.
	if err := softhsm.CreateKey("src", pin, softhsm.KeySpec{Label: "kek-ephemeral"}); err != nil {
		t.Fatal(err)
	}
	knew, err := hsmio.Open(ctx, uri("src", "kek-ephemeral"), keys.Options{Wrap: schemas.WrapAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := knew.Unwrap(ctx, keys.ByID("c3"), schemas.WrapAESGCM, w); !errors.Is(err, keys.ErrUnwrapFailed) {
		t.Fatalf("the new key unwrapped a wrap of the deleted one: %v", err)
	}
	roundTrip(t, knew, "c4")
	orig = objects(t, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "kek-ephemeral"))
	if len(orig) != 1 {
		t.Fatalf("%d token objects kek-ephemeral", len(orig))
	}
	if err := p.DestroyObject(sh, orig[0]); err != nil {
		t.Fatal(err)
	}
	if after := tokenObjects(t); after != before {
		t.Fatalf("the token holds %d secret keys, %d before the test: the copies are stored", after, before)
	}
	if n := sessionCopies(t, "kek-ephemeral"); n != 1 {
		t.Fatalf("%d session copies of kek-ephemeral: want one", n)
	}
}

// TestSessionCopyRefused: a key with CKA_COPYABLE false is used as its token
// object (crypto11's key reads CKA_TOKEN true), for aes-gcm and aes-kwp,
// and the preflight says why, as information, not as a failure. Copies
// switched off (the benchmarks' baseline) say so the same way.
func TestSessionCopyRefused(t *testing.T) {
	ctx := t.Context()
	for _, wrap := range []string{schemas.WrapAESGCM, schemas.WrapAESKWP} {
		k, err := hsmio.Open(ctx, uri("src", "kek-nocopy"), keys.Options{Wrap: wrap})
		if err != nil {
			t.Fatal(err)
		}
		ko, err := hsmio.InspectKey(ctx, k)
		if err != nil || ko.Copy || !ko.Token || ko.Label != "kek-nocopy" {
			t.Fatalf("%s: crypto11's key %+v (%v); want the token object", wrap, ko, err)
		}
		checks := k.Preflight(ctx, true, true)
		if f := failed(checks); f != "" {
			t.Fatal(f)
		}
		if info := handleCheck(checks); !strings.HasPrefix(info, "token object: CKA_COPYABLE is false") {
			t.Fatalf("%s: preflight: %q", wrap, info)
		}
		roundTrip(t, k, "nc")
	}
	was := hsmio.SetSessionCopies(false)
	defer hsmio.SetSessionCopies(was)
	k, err := hsmio.Open(ctx, uri("src", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ko, err := hsmio.InspectKey(ctx, k); err != nil || ko.Copy || !ko.Token {
		t.Fatalf("copies off: crypto11's key %+v (%v); want the token object", ko, err)
	}
	if info := handleCheck(k.Preflight(ctx, true, true)); info != "token object: session copies are switched off" {
		t.Fatalf("copies off: preflight: %q", info)
	}
}

// TestSessionCopyHolderLost: the token loses the session that holds the
// copies (closed under hsmio's feet, so SoftHSM2 frees the copies): the
// next AES-GCM, aes-kwp and inside-token rewrap each find their handle
// invalid, get a new holder and copy, and succeed without a retry from
// outside; the old copies are gone, one new copy per key is left, and no
// token object was made.
func TestSessionCopyHolderLost(t *testing.T) {
	ctx := t.Context()
	tokens, copies := tokenObjects(t), sessionCopies(t)
	lib := faultpkcs11.ForTest(t, faultpkcs11.Config{})
	open := func(object, wrap string) *hsmio.KEK {
		k, err := hsmio.Open(ctx, faultURI(lib, object), keys.Options{Wrap: wrap, Sessions: 2})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	gcm, kwp, dst := open("kek-aes", schemas.WrapAESGCM), open("kek-aes", schemas.WrapAESKWP), open("kek-extractable", schemas.WrapAESKWP)
	secret, err := keys.NewDEK(bytes.Repeat([]byte{0x44}, 32))
	if err != nil {
		t.Fatal(err)
	}
	wg, err := gcm.Wrap(ctx, keys.ByID("h"), secret)
	if err != nil {
		t.Fatal(err)
	}
	wk, err := kwp.Wrap(ctx, keys.ByID("h"), secret)
	if err != nil {
		t.Fatal(err)
	}
	if n := sessionCopies(t); n != copies+2 {
		t.Fatalf("%d session copies, %d before: want one per key", n, copies)
	}
	p, _ := rawSrc(t)
	for i, step := range []func() error{
		func() error {
			got, err := gcm.Unwrap(ctx, keys.ByID("h"), schemas.WrapAESGCM, wg)
			if err == nil && !bytes.Equal(got.Bytes(), secret.Bytes()) {
				err = errors.New("wrong DEK")
			}
			return err
		},
		func() error {
			got, err := kwp.Unwrap(ctx, keys.ByID("h"), schemas.WrapAESKWP, wk)
			if err == nil && !bytes.Equal(got.Bytes(), secret.Bytes()) {
				err = errors.New("wrong DEK")
			}
			return err
		},
		func() error {
			res, err := kwp.Rewrap(ctx, keys.RewrapRequest{Src: keys.ByID("h"), SrcMech: schemas.WrapAESKWP, Wrapped: wk, Dst: dst, DstB: keys.ByID("h")})
			if err != nil {
				return err
			}
			got, err := dst.Unwrap(ctx, keys.ByID("h"), schemas.WrapAESKWP, res.Wrapped)
			if err == nil && (!res.Verified || !bytes.Equal(got.Bytes(), secret.Bytes())) {
				err = errors.New("wrong DEK")
			}
			return err
		},
		func() error { _, err := gcm.Wrap(ctx, keys.ByID("h"), secret); return err },
	} {
		old, err := hsmio.InspectKey(ctx, gcm)
		if err != nil || !old.Copy {
			t.Fatalf("step %d: %+v %v", i, old, err)
		}
		if err := p.CloseSession(old.Holder); err != nil {
			t.Fatalf("step %d: close the holder: %v", i, err)
		}
		if err := step(); err != nil {
			t.Fatalf("step %d, after the holder was lost: %v", i, err)
		}
		now, err := hsmio.InspectKey(ctx, gcm)
		if err != nil || !now.Copy || now.Holder == old.Holder && now.Handle == old.Handle {
			t.Fatalf("step %d: the key uses %+v (%v), before %+v: want a new copy", i, now, err, old)
		}
		for _, k := range []*hsmio.KEK{kwp, dst} {
			if ko, err := hsmio.InspectKey(ctx, k); err != nil || !ko.Copy || ko.Holder != now.Holder {
				t.Fatalf("step %d: %s uses %+v (%v)", i, k.Mechanism(), ko, err)
			}
		}
		if n := sessionCopies(t); n != copies+2 {
			t.Fatalf("step %d: %d session copies, %d before: want one per key", i, n, copies)
		}
	}
	if n := tokenObjects(t); n != tokens {
		t.Fatalf("the token holds %d secret keys, %d before the test", n, tokens)
	}
}

// TestSessionCopyAfterFailOver: the HSM loses every session of the process
// again and again (the holder's too): crypto11's generations are replaced,
// each replacement checks the copy, the lost holder is closed and a new
// copy made; operations never fail, and one copy is left.
func TestSessionCopyAfterFailOver(t *testing.T) {
	copies := sessionCopies(t)
	log := t.TempDir() + "/faults.log"
	k, _ := faultOpen(t, faultpkcs11.Config{Calls: []string{"C_Encrypt", "C_Decrypt"}, Mode: faultpkcs11.Drop, Code: faultpkcs11.DeviceRemoved, DropAll: true, Every: 7, Log: log}, "kek-aes", schemas.WrapAESGCM, 2)
	first, err := hsmio.InspectKey(t.Context(), k)
	if err != nil || !first.Copy {
		t.Fatalf("%+v %v", first, err)
	}
	exercise(t, k, 2, 20)
	if lines, _ := faultpkcs11.Logged(log); len(lines) < 4 {
		t.Fatalf("only %d fail-overs: %v", len(lines), lines)
	}
	last, err := hsmio.InspectKey(context.Background(), k)
	if err != nil || !last.Copy || last.Holder == first.Holder {
		t.Fatalf("after the fail-overs the key uses %+v (%v), first %+v: want a copy on a new holder", last, err, first)
	}
	if n := sessionCopies(t); n != copies+1 {
		t.Fatalf("%d session copies, %d before: the lost holders' copies were not released", n, copies)
	}
}

// TestSessionCopyRetriedAfterFailOver: a copy that failed for now (the
// token answered C_CopyObject with CKR_DEVICE_REMOVED three times while the
// key was opened) leaves the key on its token object only until the token
// loses sessions and they are replaced: the next operation after that
// fail-over makes the copy, instead of the key staying on its token object
// until the process exits.
func TestSessionCopyRetriedAfterFailOver(t *testing.T) {
	log := t.TempDir() + "/faults.log"
	k, _ := faultOpen(t, faultpkcs11.Config{Calls: []string{"C_CopyObject", "C_Encrypt"}, Mode: faultpkcs11.Fail, Code: faultpkcs11.DeviceRemoved, Rate: 1, Max: 4, Log: log}, "kek-aes", schemas.WrapAESGCM, 2)
	ctx := t.Context()
	if ko, err := hsmio.InspectKey(ctx, k); err != nil || ko.Copy || !ko.Token {
		t.Fatalf("after three refused copies the key uses %+v (%v); want its token object", ko, err)
	}
	if info := handleCheck(k.Preflight(ctx, true, true)); !strings.Contains(info, "failed for now") {
		t.Fatalf("preflight: %q, want the copy to have failed for now", info)
	}
	// The wrap's C_Encrypt is refused with CKR_DEVICE_REMOVED: the token
	// lost its sessions; they are replaced and the wrap runs again.
	roundTrip(t, k, "after-fail-over")
	if lines, _ := faultpkcs11.Logged(log); len(lines) != 4 {
		t.Fatalf("%d calls disturbed, want 4 (3 copies, 1 encrypt): %v", len(lines), lines)
	}
	if ko, err := hsmio.InspectKey(ctx, k); err != nil || !ko.Copy {
		t.Fatalf("after the fail-over the key uses %+v (%v); want a new session copy", ko, err)
	}
}
