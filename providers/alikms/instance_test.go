package alikms_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"rekey/providers/alikms/kmsfake"
	"rekey/providers/keys"
	"rekey/providers/keystest"
)

const passwordVar = "REKEY_TEST_KMS_CLIENTKEY_PASSWORD"

// instance is a fake KMS instance with one application access point,
// whose ClientKey and the instance CA are files and whose password is in
// $REKEY_TEST_KMS_CLIENTKEY_PASSWORD.
type instance struct {
	*kmsfake.Instance
	password, keyData, ckFile, caFile string
}

func newInstance(t *testing.T) *instance {
	t.Helper()
	s := &instance{Instance: kmsfake.NewInstance(), password: randomText()}
	t.Cleanup(s.Close)
	ck, err := s.NewClientKey(s.password)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ PrivateKeyData string }
	_ = json.Unmarshal(ck, &doc)
	s.keyData = doc.PrivateKeyData
	dir := t.TempDir()
	s.ckFile, s.caFile = filepath.Join(dir, "clientKey_KAAP.json"), filepath.Join(dir, "PrivateKmsCA_kst-test.pem")
	if err := os.WriteFile(s.ckFile, ck, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.caFile, s.CACert(), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(passwordVar, s.password)
	return s
}

func (s *instance) ref(key string) string {
	return "alikms-instance:" + key + "?endpoint=" + s.Endpoint() + "&client-key-source=file:" + s.ckFile +
		"&password-source=env:" + passwordVar + "&ca-source=file:" + s.caFile
}

func (s *instance) open(t *testing.T, key string) keys.KEK {
	t.Helper()
	k, err := keys.Open(t.Context(), s.ref(key), keys.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	return k
}

func TestInstanceConformance(t *testing.T) {
	s := newInstance(t)
	s.CreateAlias("alias/keystest", s.CreateKey())
	other := s.CreateKey()
	keystest.Run(t, keystest.Backend{
		Mechanisms: []string{"alikms-instance"},
		Open:       keystest.OpenRef(s.ref("alias/keystest")),
		Other:      keystest.OpenRef(s.ref(other)),
		Missing:    s.ref("key-00000000000000000000"),
		Binds:      func(string) bool { return true },
		Secrets:    [][]byte{[]byte(s.password), []byte(s.keyData)},
		Private:    []string{s.ckFile, s.caFile, passwordVar, "client-key-source", "password-source", "ca-source"},
		Transient: func(t *testing.T, mech string) keys.KEK {
			k := keystest.OpenRef(s.ref("alias/keystest"))(t, mech)
			s.FailNext(1)
			return k
		},
	})
	if s.ClientCerts() == 0 {
		t.Error("the SDK never presented the ClientKey's TLS certificate")
	}
}

func TestInstanceThrottling(t *testing.T) {
	s := newInstance(t)
	raw := s.open(t, s.CreateKey())
	s.SetFaults(kmsfake.Faults{Throttle: 0.10})
	k := keys.WithRetry(keys.WithRate(raw, 2000), keys.RetryPolicy{Attempts: 8, Base: time.Millisecond})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < 200; i += 8 {
				d := newDEK(t, 32)
				b := keys.ByID(fmt.Sprintf("dek-%d", i))
				wrapped, err := k.Wrap(t.Context(), b, d)
				if err == nil {
					var got *keys.DEK
					if got, err = k.Unwrap(t.Context(), b, "alikms-instance", wrapped); err == nil && !bytes.Equal(got.Bytes(), d.Bytes()) {
						err = errors.New("unwrapped a different key")
					}
				}
				if err != nil {
					errs <- fmt.Errorf("DEK %d: %w", i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := s.Throttled(); n < 10 {
		t.Errorf("the fake throttled %d of ~400 requests; want about 40", n)
	}
}

func TestInstanceClassification(t *testing.T) {
	s := newInstance(t)
	id := s.CreateKey()
	k := s.open(t, id)
	d := newDEK(t, 32)
	b := keys.ByID("class")
	w, err := k.Wrap(t.Context(), b, d)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, err error, sentinel error, retryable, fatal bool) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s: no error", name)
			return
		case sentinel != nil && !errors.Is(err, sentinel):
			t.Errorf("%s: %v; want %v", name, err, sentinel)
		case keys.IsRetryable(err) != retryable || keys.IsFatal(err) != fatal:
			t.Errorf("%s: retryable %v, fatal %v; want %v, %v: %v", name, keys.IsRetryable(err), keys.IsFatal(err), retryable, fatal, err)
		}
		if strings.Contains(err.Error(), s.password) || strings.Contains(err.Error(), s.keyData[:40]) {
			t.Errorf("%s: the error holds a secret: %v", name, err)
		}
	}
	unwrap := func(b keys.Binding, w []byte) error {
		_, err := k.Unwrap(t.Context(), b, "alikms-instance", w)
		return err
	}
	open := func(ref string) error { _, err := keys.Open(t.Context(), ref, keys.Options{}); return err }

	s.FailNext(1)
	check("HTTP 503", unwrap(b, w), nil, true, true)
	s.SetFaults(kmsfake.Faults{Throttle: 1})
	check("HTTP 429", unwrap(b, w), keys.ErrThrottled, true, true)
	s.SetFaults(kmsfake.Faults{})
	check("wrong Aad", unwrap(keys.ByID("other"), w), keys.ErrUnwrapFailed, false, false)
	check("bad framing", unwrap(b, append([]byte{2}, w[1:]...)), keys.ErrUnwrapFailed, false, false)
	other := s.open(t, s.CreateKey())
	_, err = other.Unwrap(t.Context(), b, "alikms-instance", w)
	check("another key", err, keys.ErrUnwrapFailed, false, false)

	s.SetKeyState(id, "Disabled")
	check("disabled key, unwrap", unwrap(b, w), keys.ErrNotPermitted, false, true)
	check("disabled key, open", open(s.ref(id)), keys.ErrNotPermitted, false, true)
	s.SetKeyState(id, "Enabled")

	t.Setenv(passwordVar, "wrong-"+s.password)
	check("wrong ClientKey password", open(s.ref(id)), keys.ErrAuthFailed, false, true)
	t.Setenv(passwordVar, s.password)

	stranger := newInstance(t) // its ClientKey is unknown to s
	t.Setenv(passwordVar, s.password)
	pwFile := filepath.Join(t.TempDir(), "password.txt")
	_ = os.WriteFile(pwFile, []byte(stranger.password+"\n"), 0o600)
	foreign := "alikms-instance:" + id + "?endpoint=" + s.Endpoint() + "&client-key-source=file:" + stranger.ckFile +
		"&password-source=file:" + pwFile + "&ca-source=file:" + s.caFile
	check("unknown ClientKey", open(foreign), keys.ErrAuthFailed, false, true)
	// A known ClientKey ID with another private key: the signature fails.
	ck2, err := s.NewClientKey(s.password)
	if err != nil {
		t.Fatal(err)
	}
	var one, two map[string]string
	ck1, _ := os.ReadFile(s.ckFile)
	_ = json.Unmarshal(ck1, &one)
	_ = json.Unmarshal(ck2, &two)
	one["PrivateKeyData"] = two["PrivateKeyData"]
	forged, _ := json.Marshal(one)
	forgedFile := filepath.Join(t.TempDir(), "forged.json")
	_ = os.WriteFile(forgedFile, forged, 0o600)
	check("signature by another key", open(strings.Replace(s.ref(id), s.ckFile, forgedFile, 1)), keys.ErrAuthFailed, false, true)

	wrongCA := strings.Replace(s.ref(id), s.caFile, stranger.caFile, 1)
	err = open(wrongCA)
	check("another instance's CA", err, keys.ErrAuthFailed, false, true)
	if !strings.Contains(err.Error(), "TLS") {
		t.Errorf("a TLS refusal does not say so: %v", err)
	}
	insecure := "alikms-instance:" + id + "?endpoint=" + s.Endpoint() + "&client-key-source=file:" + s.ckFile + "&password-source=env:" + passwordVar + "&insecure"
	if err := open(insecure); err != nil {
		t.Errorf("insecure on 127.0.0.1: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	_ = os.WriteFile(bad, []byte(`{"KeyId": "KAAP.x", "PrivateKeyData": "`+s.password+`"}`), 0o600)
	check("malformed ClientKey", open(strings.Replace(s.ref(id), s.ckFile, bad, 1)), keys.ErrAuthFailed, false, true)
}

// TestRunbookReencrypt is the Alibaba runbook in small: a DEK wrapped by a
// key behind the shared gateway is decrypted there and encrypted under a
// key of the new KMS instance. No server-side path joins the two.
func TestRunbookReencrypt(t *testing.T) {
	g, s := newGateway(t), newInstance(t)
	src, dst := g.open(t, g.CreateKey()), s.open(t, s.CreateKey())
	if keys.CanRewrap(src, dst, "alikms") {
		t.Fatal("CanRewrap from the gateway to a KMS instance: there is no such API")
	}
	d := newDEK(t, 32)
	b := keys.Binding{DEKID: "tenant-7", Context: map[string]string{"app": "billing"}}
	w, err := src.Wrap(t.Context(), b, d)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := src.Unwrap(t.Context(), b, "alikms", w)
	if err != nil {
		t.Fatal(err)
	}
	nw, err := dst.Wrap(t.Context(), b, plain)
	plain.Zero()
	if err != nil {
		t.Fatal(err)
	}
	got, err := dst.Unwrap(t.Context(), b, "alikms-instance", nw)
	if err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Fatalf("the re-encrypted DEK: %v", err)
	}
}

// TestInstanceUnwrapOnlyAccessPoint: an access point allowed to Decrypt
// only (a source instance) opens its key unchecked and unwraps.
func TestInstanceUnwrapOnlyAccessPoint(t *testing.T) {
	s := newInstance(t)
	id := s.CreateKey()
	k := s.open(t, id)
	d := newDEK(t, 32)
	w, err := k.Wrap(t.Context(), keys.ByID("x"), d)
	if err != nil {
		t.Fatal(err)
	}
	var ck struct{ KeyId string }
	raw, _ := os.ReadFile(s.ckFile)
	_ = json.Unmarshal(raw, &ck)
	s.Deny(ck.KeyId, "Encrypt")
	src := s.open(t, id)
	if got, err := src.Unwrap(t.Context(), keys.ByID("x"), "alikms-instance", w); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Fatalf("Unwrap: %v", err)
	}
	checks, _ := keys.Preflight(t.Context(), src, false, true)
	if len(checks) == 0 || !checks[0].OK || !checks[0].Warn {
		t.Errorf("Preflight of an unwrap-only access point: %+v; want a warning", checks)
	}
	if _, err := src.Wrap(t.Context(), keys.ByID("y"), d); !errors.Is(err, keys.ErrNotPermitted) {
		t.Errorf("Wrap refused by the access point: %v; want ErrNotPermitted", err)
	}
}
