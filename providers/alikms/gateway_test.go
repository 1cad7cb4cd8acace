package alikms_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
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

	_ "rekey/providers/alikms"
)

const testRegion = "cn-hangzhou"

// gateway is a fake KMS gateway with one AccessKey, whose secret is in a
// credential-source file.
type gateway struct {
	*kmsfake.Gateway
	akID, secret, credFile string
}

func newGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{Gateway: kmsfake.NewGateway(testRegion), akID: "LTAI5tRekeyTest", secret: randomText()}
	t.Cleanup(g.Close)
	g.AddAccessKey(g.akID, g.secret, "")
	g.credFile = filepath.Join(t.TempDir(), "accesskey.json")
	doc := fmt.Sprintf(`{"AccessKeyId": %q, "AccessKeySecret": %q}`, g.akID, g.secret)
	if err := os.WriteFile(g.credFile, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// ref is a reference to key on g, as a job file writes it.
func (g *gateway) ref(key string) string {
	return "alikms:" + key + "?region=" + testRegion + "&endpoint=" + g.Endpoint() + "&credential-source=file:" + g.credFile
}

func (g *gateway) open(t *testing.T, key string) keys.KEK {
	t.Helper()
	k, err := keys.Open(t.Context(), g.ref(key), keys.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", key, err)
	}
	return k
}

func randomText() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newDEK(t *testing.T, n int) *keys.DEK {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	d, err := keys.NewDEK(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestGatewayConformance(t *testing.T) {
	g := newGateway(t)
	g.CreateAlias("alias/keystest", g.CreateKey())
	other := g.CreateKey()
	keystest.Run(t, keystest.Backend{
		Mechanisms: []string{"alikms"},
		Open:       keystest.OpenRef(g.ref("alias/keystest")),
		Other:      keystest.OpenRef(g.ref(other)),
		Missing:    g.ref("0b8f3b4e-5a7c-4f1e-9d2a-000000000000"),
		Binds:      func(string) bool { return true },
		Secrets:    [][]byte{[]byte(g.secret)},
		Private:    []string{g.credFile, "credential-source"},
		Transient: func(t *testing.T, mech string) keys.KEK {
			k := keystest.OpenRef(g.ref("alias/keystest"))(t, mech)
			g.FailNext(1)
			return k
		},
	})
}

// TestGatewayThrottling: with 10% of requests answered 429, 200 wraps and
// their unwraps through the decorators rekey uses all succeed.
func TestGatewayThrottling(t *testing.T) {
	g := newGateway(t)
	raw := g.open(t, g.CreateKey())
	g.SetFaults(kmsfake.Faults{Throttle: 0.10})
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
					if got, err = k.Unwrap(t.Context(), b, "alikms", wrapped); err == nil && !bytes.Equal(got.Bytes(), d.Bytes()) {
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
	if n := g.Throttled(); n < 10 {
		t.Errorf("the fake throttled %d of ~400 requests; want about 40", n)
	}
	t.Logf("%d requests, %d throttled", g.Calls("Encrypt")+g.Calls("Decrypt"), g.Throttled())
}

func TestGatewayClassification(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	k := g.open(t, id)
	d := newDEK(t, 32)
	b := keys.ByID("class")
	w, err := k.Wrap(t.Context(), b, d)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		sentinel         error
		retryable, fatal bool
	}
	check := func(name string, err error, w want) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s: no error", name)
			return
		case w.sentinel != nil && !errors.Is(err, w.sentinel):
			t.Errorf("%s: %v; want %v", name, err, w.sentinel)
		case keys.IsRetryable(err) != w.retryable || keys.IsFatal(err) != w.fatal:
			t.Errorf("%s: retryable %v, fatal %v; want %v, %v: %v", name, keys.IsRetryable(err), keys.IsFatal(err), w.retryable, w.fatal, err)
		}
		for _, s := range []string{g.secret, base64.StdEncoding.EncodeToString(d.Bytes()), hex.EncodeToString(d.Bytes())} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: the error holds a secret: %v", name, err)
			}
		}
	}
	unwrap := func(b keys.Binding, w []byte) error { _, err := k.Unwrap(t.Context(), b, "alikms", w); return err }
	wrap := func() error { _, err := k.Wrap(t.Context(), b, d); return err }

	g.FailNext(1)
	check("HTTP 503", unwrap(b, w), want{nil, true, true})
	g.SetFaults(kmsfake.Faults{Throttle: 1})
	err = unwrap(b, w)
	check("HTTP 429", err, want{keys.ErrThrottled, true, true})
	if !strings.Contains(err.Error(), "Rejected.Throttling") {
		t.Errorf("a throttled error does not name the code: %v", err)
	}
	g.SetFaults(kmsfake.Faults{})
	check("wrong EncryptionContext", unwrap(keys.ByID("other"), w), want{keys.ErrUnwrapFailed, false, false})
	check("damaged key version", unwrap(b, append([]byte{w[0] ^ 1}, w[1:]...)), want{keys.ErrUnwrapFailed, false, false})
	check("reserved context name", unwrap(keys.Binding{Context: map[string]string{"rekey:dek_id": "x"}}, w), want{keys.ErrUnwrapFailed, false, false})
	for _, state := range []string{"Disabled", "PendingDeletion"} {
		g.SetKeyState(id, state)
		check(state+" key, wrap", wrap(), want{keys.ErrNotPermitted, false, true})
		check(state+" key, unwrap", unwrap(b, w), want{keys.ErrNotPermitted, false, true})
		_, err := keys.Open(t.Context(), g.ref(id), keys.Options{})
		check(state+" key, open", err, want{keys.ErrNotPermitted, false, true})
	}
	g.SetKeyState(id, "Enabled")
	_, err = keys.Open(t.Context(), g.ref("alias/none"), keys.Options{})
	check("missing alias", err, want{keys.ErrKeyNotFound, false, true})
	_, err = keys.Open(t.Context(), g.ref(id), keys.Options{Wrap: "aes-gcm"})
	check("foreign mechanism", err, want{keys.ErrMechanism, false, true})

	// A changed secret: the fake's SignatureDoesNotMatch echoes the
	// signed query, Plaintext included; rekey must not print it.
	g.AddAccessKey(g.akID, "another-secret", "")
	check("signature mismatch", wrap(), want{keys.ErrAuthFailed, false, true})
	g.AddAccessKey("LTAI5tOther", g.secret, "")
	g.AddAccessKey(g.akID, g.secret, "sts-token")
	check("missing STS token", wrap(), want{keys.ErrAuthFailed, false, true})
	g.AddAccessKey(g.akID, g.secret, "")
	t.Setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI5tUnknown")
	t.Setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", g.secret)
	envRef := "alikms:" + id + "?region=" + testRegion + "&endpoint=" + g.Endpoint()
	_, err = keys.Open(t.Context(), envRef, keys.Options{})
	check("unknown AccessKey", err, want{keys.ErrAuthFailed, false, true})
	t.Setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", g.akID)
	if _, err := keys.Open(t.Context(), envRef, keys.Options{}); err != nil {
		t.Errorf("open with the AccessKey from the environment: %v", err)
	}
	_, err = keys.Open(t.Context(), g.ref(id)+"x", keys.Options{}) // credential file that is not there
	check("missing credential file", err, want{keys.ErrAuthFailed, false, true})
}

func TestGatewayCredentialSTS(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	g.AddAccessKey("STS.rekey", "sts-secret-"+g.secret, "sts-token-"+g.secret)
	file := filepath.Join(t.TempDir(), "sts.json")
	doc := fmt.Sprintf(`{"RequestId": "x", "Credentials": {"AccessKeyId": "STS.rekey", "AccessKeySecret": "sts-secret-%s", "SecurityToken": "sts-token-%s"}}`, g.secret, g.secret)
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := keys.Open(t.Context(), "alikms:"+id+"?region="+testRegion+"&endpoint="+g.Endpoint()+"&credential-source=file:"+file, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := newDEK(t, 32)
	if _, err := k.Wrap(t.Context(), keys.ByID("sts"), d); err != nil {
		t.Fatal(err)
	}
	if s := fmt.Sprintf("%v %+v %#v", k, k, k); strings.Contains(s, g.secret) {
		t.Errorf("the printed KEK holds a secret: %s", s)
	}
	if err := os.WriteFile(file, []byte(`{"AccessKeyId": "x", "AccessKeySecret": `+g.secret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = keys.Open(t.Context(), "alikms:"+id+"?region="+testRegion+"&endpoint="+g.Endpoint()+"&credential-source=file:"+file, keys.Options{})
	if !errors.Is(err, keys.ErrAuthFailed) || strings.Contains(err.Error(), g.secret) {
		t.Errorf("a malformed credential file: %v; want ErrAuthFailed without its content", err)
	}
}

// TestGatewayReEncrypt: a rewrap between two keys of one gateway is one
// ReEncrypt; the DEK unwraps under the new key and binding.
func TestGatewayReEncrypt(t *testing.T) {
	g := newGateway(t)
	src, dst := g.open(t, g.CreateKey()), g.open(t, g.CreateKey())
	if !keys.CanRewrap(src, dst, "alikms") {
		t.Fatal("CanRewrap between two keys of one gateway is false")
	}
	d := newDEK(t, 32)
	sb := keys.ByID("dek-1")
	db := keys.Binding{DEKID: "dek-1", Context: map[string]string{"tenant": "42"}}
	w, err := src.Wrap(t.Context(), sb, d)
	if err != nil {
		t.Fatal(err)
	}
	decrypts, encrypts := g.Calls("Decrypt"), g.Calls("Encrypt")
	res, err := keys.Rewrap(t.Context(), keys.WithRetry(src, keys.RetryPolicy{}), keys.RewrapRequest{Src: sb, SrcMech: "alikms", Wrapped: w, Dst: dst, DstB: db})
	if err != nil {
		t.Fatal(err)
	}
	if g.Calls("ReEncrypt") != 1 || g.Calls("Decrypt") != decrypts || g.Calls("Encrypt") != encrypts {
		t.Errorf("Rewrap made %d ReEncrypt, %d Decrypt, %d Encrypt calls; want 1, 0, 0", g.Calls("ReEncrypt"), g.Calls("Decrypt")-decrypts, g.Calls("Encrypt")-encrypts)
	}
	if res.Verified || res.Proof != "" {
		t.Errorf("ReEncrypt claims a check it did not do: %+v", res)
	}
	got, err := dst.Unwrap(t.Context(), db, "alikms", res.Wrapped)
	if err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Fatalf("the rewrapped DEK does not unwrap under the destination: %v", err)
	}
	if _, err := dst.Unwrap(t.Context(), sb, "alikms", res.Wrapped); !errors.Is(err, keys.ErrUnwrapFailed) {
		t.Errorf("the rewrapped DEK unwraps under the old binding: %v", err)
	}

	// Another region, another AccessKey: the caller unwraps and wraps.
	other := newGateway(t)
	if keys.CanRewrap(src, other.open(t, other.CreateKey()), "alikms") {
		t.Error("CanRewrap across gateways is true")
	}
	g.AddAccessKey("LTAI5tSecond", g.secret, "")
	file := filepath.Join(t.TempDir(), "second.json")
	_ = os.WriteFile(file, []byte(fmt.Sprintf(`{"AccessKeyId": "LTAI5tSecond", "AccessKeySecret": %q}`, g.secret)), 0o600)
	second, err := keys.Open(t.Context(), "alikms:"+g.CreateKey()+"?region="+testRegion+"&endpoint="+g.Endpoint()+"&credential-source=file:"+file, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if keys.CanRewrap(src, second, "alikms") {
		t.Error("CanRewrap to a key opened with another AccessKey is true")
	}
}

func TestGatewayRotation(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	k := g.open(t, id)
	d := newDEK(t, 32)
	old, err := k.Wrap(t.Context(), keys.ByID("r"), d)
	if err != nil {
		t.Fatal(err)
	}
	g.RotateKey(id)
	if got, err := k.Unwrap(t.Context(), keys.ByID("r"), "alikms", old); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Fatalf("a DEK wrapped before rotation: %v", err)
	}
}

// TestGatewayMatchesResolvedAlias: a key opened by alias matches DEK table
// rows that name its key ID, and the other way round.
func TestGatewayMatchesResolvedAlias(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	g.CreateAlias("alias/app", id)
	k := g.open(t, "alias/app")
	for _, ref := range []string{g.ref("alias/app"), g.ref(id)} {
		if !keys.Matches(k, ref) {
			t.Errorf("the key opened by alias does not match %s", keys.Redact(ref))
		}
	}
	if keys.Matches(k, g.ref(g.CreateKey())) {
		t.Error("the key matches another key's reference")
	}
}

func TestGatewayPreflight(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	k := g.open(t, id)
	checks, ok := keys.Preflight(t.Context(), k, true, true)
	if !ok || len(checks) < 2 {
		t.Fatalf("Preflight: %v, %+v", ok, checks)
	}
	for _, c := range checks {
		if !c.OK {
			t.Errorf("Preflight of a usable key: %+v", c)
		}
	}
	g.SetKeyState(id, "Disabled")
	checks, _ = keys.Preflight(t.Context(), k, false, true)
	if checks[0].OK || !strings.Contains(checks[0].Info, "Disabled") {
		t.Errorf("Preflight of a disabled key: %+v", checks)
	}
}

func TestGatewayContextEndsWait(t *testing.T) {
	g := newGateway(t)
	k := g.open(t, g.CreateKey())
	g.SetFaults(kmsfake.Faults{Delay: 2 * time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := k.Wrap(ctx, keys.ByID("slow"), newDEK(t, 32))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("Wrap with a context that ends: %v after %v", err, time.Since(start))
	}
}

func TestGatewayRefusesSDKDebugLog(t *testing.T) {
	g := newGateway(t)
	t.Setenv("DEBUG", "sql,tea")
	_, err := keys.Open(t.Context(), g.ref(g.CreateKey()), keys.Options{})
	if !errors.Is(err, keys.ErrModule) || !strings.Contains(err.Error(), "DEBUG") {
		t.Errorf("open with DEBUG=tea: %v", err)
	}
}

// TestGatewayWithoutDescribeKey: a RAM policy that grants Encrypt and
// Decrypt only still works for a key named by ID; the plan says what it
// could not check.
func TestGatewayWithoutDescribeKey(t *testing.T) {
	g := newGateway(t)
	id := g.CreateKey()
	g.CreateAlias("alias/app", id)
	g.Deny(g.akID, "DescribeKey")
	k := g.open(t, id)
	d := newDEK(t, 32)
	w, err := k.Wrap(t.Context(), keys.ByID("x"), d)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Unwrap(t.Context(), keys.ByID("x"), "alikms", w); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Fatalf("Unwrap: %v", err)
	}
	checks, _ := keys.Preflight(t.Context(), k, true, true)
	if len(checks) == 0 || !checks[0].OK || !checks[0].Warn {
		t.Errorf("Preflight without DescribeKey: %+v; want a warning", checks)
	}
	if _, err := keys.Open(t.Context(), g.ref("alias/app"), keys.Options{}); !errors.Is(err, keys.ErrNotPermitted) {
		t.Errorf("open by alias without DescribeKey: %v; want ErrNotPermitted (the alias cannot be resolved)", err)
	}
	g.Deny(g.akID, "Decrypt")
	if _, err := k.Unwrap(t.Context(), keys.ByID("x"), "alikms", w); !errors.Is(err, keys.ErrNotPermitted) || !keys.IsFatal(err) {
		t.Errorf("Decrypt refused by policy: %v; want ErrNotPermitted, fatal", err)
	}
}

func TestGatewayNoCredentials(t *testing.T) {
	g := newGateway(t)
	t.Setenv("HOME", t.TempDir()) // no ~/.alibabacloud/credentials
	for _, v := range []string{"ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_Id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
		"ALIBABA_CLOUD_CREDENTIALS_FILE", "ALIBABA_CLOUD_ECS_METADATA", "ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	_, err := keys.Open(t.Context(), "alikms:"+g.CreateKey()+"?region="+testRegion+"&endpoint="+g.Endpoint(), keys.Options{})
	if !errors.Is(err, keys.ErrAuthFailed) || !strings.Contains(err.Error(), "credential-source") {
		t.Errorf("open without credentials: %v; want ErrAuthFailed naming where credentials come from", err)
	}
}
