package ibmkp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"rekey/providers/ibmkp"
	"rekey/providers/ibmkp/kpfake"
	"rekey/providers/keys"
	"rekey/providers/keystest"
)

// testAPIKey is the fake's API key; it must appear in no error, printed
// value or request other than the token exchange.
const (
	testAPIKey = "kpfake-apikey-Zq7-5ecret-0123456789abcdef"
	apiKeyEnv  = "REKEY_TEST_IBM_APIKEY"
)

// env is a fake with two instances, as in the HPCS runbook: beta (two
// keys) and production (one).
type env struct {
	srv                 *kpfake.Server
	beta, prod          string
	key, other, prodKey string
}

func setup(t *testing.T) *env {
	t.Helper()
	t.Setenv(apiKeyEnv, testAPIKey)
	e := &env{srv: kpfake.New(t), beta: "beta-0a1b2c3d", prod: "prod-4e5f6a7b"}
	e.srv.AddAPIKey(testAPIKey)
	e.key, e.other = e.srv.CreateKey(e.beta), e.srv.CreateKey(e.beta)
	e.prodKey = e.srv.CreateKey(e.prod)
	return e
}

// ref is a reference as a user writes it, with the API key's source and
// the fake's IAM endpoint.
func (e *env) ref(instance, key string, extra ...string) string {
	q := append([]string{"apikey-source=env:" + apiKeyEnv, "iam-endpoint=" + e.srv.IAMEndpoint()}, extra...)
	return "ibmkp:endpoint=" + e.srv.URL + ";instance=" + instance + ";key=" + key + "?" + strings.Join(q, "&")
}

func (e *env) open(t *testing.T, instance, key string, extra ...string) keys.KEK {
	t.Helper()
	k, err := keys.Open(t.Context(), e.ref(instance, key, extra...), keys.Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return k
}

func TestConformance(t *testing.T) {
	e := setup(t)
	transient := 0
	keystest.Run(t, keystest.Backend{
		Mechanisms: []string{ibmkp.Mechanism},
		Open:       keystest.OpenRef(e.ref(e.beta, e.key)),
		Other:      keystest.OpenRef(e.ref(e.beta, e.other)),
		Missing:    e.ref(e.beta, "no-such-key"),
		Binds:      func(string) bool { return true },
		Secrets:    [][]byte{[]byte(testAPIKey)},
		Private:    []string{"apikey-source", apiKeyEnv, "identity/token"},
		// The next unwrap of a freshly opened KEK is throttled (429) or
		// finds the service unavailable (503), alternately.
		Transient: func(t *testing.T, mech string) keys.KEK {
			k := keystest.OpenRef(e.ref(e.beta, e.key))(t, mech)
			e.srv.FailNext("unwrap", []int{429, 503}[transient%2], 1)
			transient++
			return k
		},
	})
	if n := e.srv.Stats().APIKeyLeaks; n != 0 {
		t.Errorf("%d Key Protect requests carried the API key", n)
	}
}

func TestRefs(t *testing.T) {
	const id = ";instance=0c1d2e3f-0000-4000-8000-000000000001;key=7a8b9c0d-0000-4000-8000-000000000002"
	for _, c := range []struct{ in, canonical, custodian string }{
		{"ibmkp:region=us-south" + id + "?apikey-source=env:IBM_KEY&key-ring=ring-1",
			"ibmkp:region=us-south" + id, "ibmkp|https://us-south.kms.cloud.ibm.com|0c1d2e3f-0000-4000-8000-000000000001"},
		{"ibmkp:endpoint=https://US-South.kms.cloud.ibm.com/" + id,
			"ibmkp:region=us-south" + id, "ibmkp|https://us-south.kms.cloud.ibm.com|0c1d2e3f-0000-4000-8000-000000000001"},
		{"ibmkp:key=7a8b9c0d-0000-4000-8000-000000000002;instance=0c1d2e3f-0000-4000-8000-000000000001;endpoint=https://0c1d2e3f.api.eu-de.hs-crypto.appdomain.cloud?apikey-source=file:/run/secrets/ibm",
			"ibmkp:endpoint=https://0c1d2e3f.api.eu-de.hs-crypto.appdomain.cloud" + id, "ibmkp|https://0c1d2e3f.api.eu-de.hs-crypto.appdomain.cloud|0c1d2e3f-0000-4000-8000-000000000001"},
		{"ibmkp:endpoint=https://private.us-south.kms.cloud.ibm.com" + id + "?iam-endpoint=https://private.iam.cloud.ibm.com",
			"ibmkp:endpoint=https://private.us-south.kms.cloud.ibm.com" + id, "ibmkp|https://private.us-south.kms.cloud.ibm.com|0c1d2e3f-0000-4000-8000-000000000001"},
		{"ibmkp:endpoint=http://127.0.0.1:8080" + id, "ibmkp:endpoint=http://127.0.0.1:8080" + id, "ibmkp|http://127.0.0.1:8080|0c1d2e3f-0000-4000-8000-000000000001"},
	} {
		r, err := keys.ParseRef(c.in)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", c.in, err)
			continue
		}
		if r.Canonical != c.canonical || r.Redacted != c.canonical || r.Custodian != c.custodian {
			t.Errorf("ParseRef(%q) = %+v, want canonical %q, custodian %q", c.in, r, c.canonical, c.custodian)
		}
		if !keys.SameKey(c.in, c.canonical) {
			t.Errorf("SameKey(%q, its canonical form) = false", c.in)
		}
	}
	if keys.SameKey("ibmkp:region=us-south"+id, "ibmkp:region=eu-de"+id) {
		t.Errorf("keys in two regions compare equal")
	}
	for _, bad := range []string{
		"ibmkp:",
		"ibmkp:region=us-south;instance=i",
		"ibmkp:region=us-south;key=k",
		"ibmkp:region=us-south;endpoint=https://x.example" + id,
		"ibmkp:region=us-south;region=us-south" + id,
		"ibmkp:region=US" + id,
		"ibmkp:zone=us-south" + id,
		"ibmkp:endpoint=http://kms.example.com" + id,
		"ibmkp:endpoint=https://user:pw@kms.example.com" + id,
		"ibmkp:endpoint=https://kms.example.com/api" + id,
		"ibmkp:region=us-south;instance=a b;key=k",
		"ibmkp:region=us-south" + id + "?apikey=sekrit",
		"ibmkp:region=us-south" + id + "?apikey-source=sekrit",
		"ibmkp:region=us-south" + id + "?apikey-source=env:A&apikey-source=env:B",
		"ibmkp:region=us-south" + id + "?iam-endpoint=http://iam.example.com",
		"ibmkp:region=us-south" + id + "?unknown=1",
		"ibmkp:region=us-south" + id + "#frag",
		"pkcs11:token=x",
	} {
		if _, err := ibmkp.ParseURI(bad); !errors.Is(err, keys.ErrBadURI) {
			t.Errorf("ParseURI(%q) = %v, want ErrBadURI", bad, err)
		} else if strings.Contains(err.Error(), "sekrit") {
			t.Errorf("ParseURI(%q): error %q repeats a credential", bad, err)
		}
	}
}

func TestAADMapping(t *testing.T) {
	for _, c := range []struct {
		b    keys.Binding
		want []string
	}{
		{keys.Binding{}, nil},
		{keys.ByID("tenant-42"), []string{"rekey:dek_id=tenant-42"}},
		{keys.Binding{AAD: []string{"a", "b"}}, []string{"a", "b"}},
		{keys.Binding{DEKID: "d", Context: map[string]string{"z": "1", "a=b": "c&d"}, AAD: []string{"x"}},
			[]string{"rekey:dek_id=d", "rekey:ctx:a%3Db=c%26d", "rekey:ctx:z=1", "x"}},
	} {
		got, err := ibmkp.AAD(c.b)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("AAD(%s) = %q, %v; want %q", c.b, got, err, c.want)
		}
	}
	for _, b := range []keys.Binding{
		{AAD: []string{"rekey:dek_id=x"}},
		{DEKID: strings.Repeat("d", 243)},
		{AAD: []string{strings.Repeat("é", 256)}},
	} {
		if _, err := ibmkp.AAD(b); err == nil {
			t.Errorf("AAD(%.60s) accepted", b)
		}
	}
}

func flip(w []byte) []byte {
	c := bytes.Clone(w)
	c[len(c)/3] ^= 1
	return c
}

func newDEK(t *testing.T, fill byte) *keys.DEK {
	t.Helper()
	d, err := keys.NewDEK(bytes.Repeat([]byte{fill}, keys.DEKSize))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestTokenRefresh: a token is renewed before it expires, once for all
// concurrent callers, and a revoked one is replaced after one 401.
func TestTokenRefresh(t *testing.T) {
	e := setup(t)
	e.srv.SetTokenTTL(time.Second)
	k := e.open(t, e.beta, e.key)
	d := newDEK(t, 1)
	wrap := func() {
		t.Helper()
		if _, err := k.Wrap(t.Context(), keys.ByID("t"), d); err != nil {
			t.Fatalf("wrap: %v", err)
		}
	}
	wrap()
	if n := e.srv.Stats().Tokens; n != 1 {
		t.Fatalf("%d tokens after one open and one wrap, want 1", n)
	}
	time.Sleep(900 * time.Millisecond) // past 80% of the lifetime
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(wrap)
	}
	wg.Wait()
	if s := e.srv.Stats(); s.Tokens != 2 || s.Unauthorized != 0 {
		t.Errorf("after the refresh point and 32 concurrent wraps: %d tokens (want 2), %d refused (want 0)", s.Tokens, s.Unauthorized)
	}
	e.srv.RevokeTokens()
	for range 8 {
		wg.Go(wrap)
	}
	wg.Wait()
	if s := e.srv.Stats(); s.Tokens != 3 || s.Unauthorized == 0 {
		t.Errorf("after a revocation: %d tokens (want 3), %d refused (want some)", s.Tokens, s.Unauthorized)
	}
}

// TestRotation: after a rotation, unwrap answers the DEK under the latest
// version, and the same-key rewrap moves it there inside the service.
func TestRotation(t *testing.T) {
	e := setup(t)
	k := e.open(t, e.beta, e.key)
	kp := keys.Base(k).(*ibmkp.KEK)
	d := newDEK(t, 2)
	b := keys.ByID("rotated")
	old, err := k.Wrap(t.Context(), b, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, latest, err := kp.UnwrapLatest(t.Context(), b, ibmkp.Mechanism, old); err != nil || latest != nil {
		t.Fatalf("UnwrapLatest before rotation: newer ciphertext %q, %v; want none", latest, err)
	}
	e.srv.Rotate(e.key)
	got, latest, err := kp.UnwrapLatest(t.Context(), b, ibmkp.Mechanism, old)
	if err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) || latest == nil {
		t.Fatalf("UnwrapLatest after rotation: same key %v, newer ciphertext %v, %v", err == nil && bytes.Equal(got.Bytes(), d.Bytes()), latest != nil, err)
	}
	if got, next, err := kp.UnwrapLatest(t.Context(), b, ibmkp.Mechanism, latest); err != nil || next != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Errorf("the newer ciphertext: %v, newer again: %v", err, next != nil)
	}

	dk := keys.WithRetry(keys.WithRate(k, 1000), keys.RetryPolicy{})
	if !keys.CanRewrap(dk, k, ibmkp.Mechanism) {
		t.Fatal("CanRewrap to the same key is false")
	}
	for _, o := range []keys.KEK{e.open(t, e.beta, e.other), e.open(t, e.prod, e.prodKey)} {
		if keys.CanRewrap(k, o, ibmkp.Mechanism) {
			t.Errorf("CanRewrap to %s is true; Key Protect rewraps within one key only", o.URI())
		}
	}
	res, err := keys.Rewrap(t.Context(), dk, keys.RewrapRequest{Src: b, SrcMech: ibmkp.Mechanism, Wrapped: old, Dst: k, DstB: b})
	if err != nil || res.Verified || res.Proof != "" {
		t.Fatalf("Rewrap: %+v, %v", res, err)
	}
	if got, next, err := kp.UnwrapLatest(t.Context(), b, ibmkp.Mechanism, res.Wrapped); err != nil || next != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Errorf("the rewrapped ciphertext: %v, not the latest version: %v", err, next != nil)
	}
	for what, w := range map[string][]byte{"flipped": flip(old), "truncated": old[:len(old)/2], "empty": nil, "not base64": []byte("!!")} {
		_, err := keys.Rewrap(t.Context(), dk, keys.RewrapRequest{Src: b, SrcMech: ibmkp.Mechanism, Wrapped: w, Dst: k, DstB: b})
		if !errors.Is(err, keys.ErrUnwrapFailed) || keys.IsRetryable(err) {
			t.Errorf("Rewrap of a %s ciphertext: %v, want ErrUnwrapFailed", what, err)
		}
	}
	_, err = keys.Rewrap(t.Context(), dk, keys.RewrapRequest{Src: b, SrcMech: ibmkp.Mechanism, Wrapped: old, Dst: k, DstB: keys.ByID("elsewhere")})
	if !errors.Is(err, keys.ErrNoRewrap) {
		t.Errorf("Rewrap to another binding: %v, want ErrNoRewrap", err)
	}
	_, err = keys.Rewrap(t.Context(), dk, keys.RewrapRequest{Src: keys.ByID("elsewhere"), SrcMech: ibmkp.Mechanism, Wrapped: old, Dst: k, DstB: keys.ByID("elsewhere")})
	if !errors.Is(err, keys.ErrUnwrapFailed) || keys.IsRetryable(err) {
		t.Errorf("Rewrap with the wrong source binding: %v, want ErrUnwrapFailed", err)
	}
}

// TestBetaToProduction is the HPCS runbook: DEKs unwrapped in the beta
// instance are wrapped in the production one; the instances never see
// each other's ciphertexts as their own.
func TestBetaToProduction(t *testing.T) {
	e := setup(t)
	beta, prod := e.open(t, e.beta, e.key), e.open(t, e.prod, e.prodKey)
	if keys.Custodian(beta) == keys.Custodian(prod) {
		t.Fatalf("beta and production share a custodian: %s", keys.Custodian(beta))
	}
	if keys.CanRewrap(beta, prod, ibmkp.Mechanism) {
		t.Fatal("CanRewrap across instances")
	}
	for i := range 20 {
		b := keys.ByID(fmt.Sprintf("dek-%d", i))
		d := newDEK(t, byte(i))
		w, err := beta.Wrap(t.Context(), b, d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := prod.Unwrap(t.Context(), b, ibmkp.Mechanism, w); !errors.Is(err, keys.ErrUnwrapFailed) {
			t.Fatalf("production unwraps a beta ciphertext: %v", err)
		}
		u, err := beta.Unwrap(t.Context(), b, ibmkp.Mechanism, w)
		if err != nil {
			t.Fatal(err)
		}
		nw, err := prod.Wrap(t.Context(), b, u)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := prod.Unwrap(t.Context(), b, ibmkp.Mechanism, nw); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
			t.Fatalf("production cannot unwrap what it wrapped: %v", err)
		}
	}
	// A beta key asked for through the production instance does not exist.
	if _, err := keys.Open(t.Context(), e.ref(e.prod, e.key), keys.Options{}); !errors.Is(err, keys.ErrKeyNotFound) {
		t.Errorf("beta's key through production's instance: %v, want ErrKeyNotFound", err)
	}
}

func TestClassification(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	k := e.open(t, e.beta, e.key)
	d := newDEK(t, 3)
	b := keys.ByID("c")
	w, err := k.Wrap(ctx, b, d)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, want error, retryable bool) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s: no error", what)
		case want != nil && !errors.Is(err, want):
			t.Errorf("%s: %v, want %v", what, err, want)
		case keys.IsRetryable(err) != retryable:
			t.Errorf("%s: retryable %v, want %v: %v", what, keys.IsRetryable(err), retryable, err)
		case strings.Contains(err.Error(), testAPIKey):
			t.Errorf("%s: the error holds the API key", what)
		case !strings.Contains(err.Error(), "ibmkp") && !errors.Is(err, keys.ErrBadURI):
			t.Errorf("%s: the error names no key: %v", what, err)
		}
	}
	unwrap := func() error { _, err := k.Unwrap(ctx, b, ibmkp.Mechanism, w); return err }
	wrap := func() error { _, err := k.Wrap(ctx, b, d); return err }

	e.srv.SetState(e.key, kpfake.Suspended)
	check("wrap with a disabled key", wrap(), keys.ErrNotPermitted, false)
	check("unwrap with a disabled key", unwrap(), keys.ErrNotPermitted, false)
	e.srv.SetState(e.key, kpfake.Deactivated)
	check("wrap with an expired key", wrap(), keys.ErrNotPermitted, false)
	if err := unwrap(); err != nil {
		t.Errorf("unwrap with an expired key: %v", err)
	}
	e.srv.SetState(e.key, kpfake.Destroyed)
	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{})
	check("open a deleted key", err, keys.ErrNotPermitted, false)
	check("unwrap with a deleted key", unwrap(), keys.ErrNotPermitted, false)
	e.srv.SetState(e.key, kpfake.Active)

	t.Setenv(apiKeyEnv, "kpfake-wrong-api-key")
	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{})
	check("open with a wrong API key", err, keys.ErrAuthFailed, false)
	t.Setenv(apiKeyEnv, "")
	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{})
	check("open without an API key", err, keys.ErrAuthFailed, false)
	t.Setenv(apiKeyEnv, testAPIKey)

	e.srv.AddAPIKey("kpfake-prod-only-key", e.prod)
	t.Setenv("REKEY_TEST_IBM_PROD_KEY", "kpfake-prod-only-key")
	_, err = keys.Open(ctx, strings.Replace(e.ref(e.beta, e.key), apiKeyEnv, "REKEY_TEST_IBM_PROD_KEY", 1), keys.Options{})
	check("open with an API key not granted the instance", err, keys.ErrAuthFailed, false)

	_, err = keys.Open(ctx, e.ref(e.beta, e.key, "key-ring=other-ring"), keys.Options{})
	check("open in the wrong key ring", err, keys.ErrKeyNotFound, false)
	if _, err := keys.Open(ctx, e.ref(e.beta, e.key, "key-ring=default"), keys.Options{}); err != nil {
		t.Errorf("open in the key's ring: %v", err)
	}

	e.srv.FailNext("wrap", 403, 1)
	check("a wrap the token's user may not do (403)", wrap(), keys.ErrAuthFailed, false)
	// A 401 on a cached token gets a new token and one more try; a
	// second 401 is final.
	e.srv.FailNext("unwrap", 401, 1)
	if err := unwrap(); err != nil {
		t.Errorf("an unwrap answered 401 once (a token revoked early): %v", err)
	}
	e.srv.FailNext("unwrap", 401, 2)
	check("an unwrap answered 401 twice", unwrap(), keys.ErrAuthFailed, false)
	e.srv.FailNext("wrap", 429, 1)
	check("a throttled wrap", wrap(), keys.ErrThrottled, true)
	e.srv.FailNext("unwrap", 500, 1)
	check("unwrap, service down", unwrap(), nil, true)
	e.srv.FailNext("metadata", 502, 1)
	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{})
	check("open, service down", err, nil, true)

	e.srv.RevokeTokens()
	e.srv.FailNext("token", 503, 1)
	check("wrap, IAM down", wrap(), nil, true)
	e.srv.FailNext("token", 429, 1)
	check("wrap, IAM throttling", wrap(), keys.ErrThrottled, true)

	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{Wrap: "aes-gcm"})
	check("open for another mechanism", err, keys.ErrMechanism, false)
	_, err = k.Unwrap(ctx, b, "aes-gcm", w)
	check("unwrap as another mechanism", err, keys.ErrMechanism, false)
	_, err = k.Unwrap(ctx, keys.Binding{AAD: []string{"rekey:x"}}, ibmkp.Mechanism, w)
	check("unwrap with a reserved AAD element", err, keys.ErrUnwrapFailed, false)
	_, err = k.Unwrap(ctx, b, ibmkp.Mechanism, []byte("not base64!"))
	check("unwrap of a non-base64 blob", err, keys.ErrUnwrapFailed, false)
	_, err = k.Wrap(ctx, keys.ByID(strings.Repeat("x", 250)), d)
	check("wrap bound to a 250-character dek_id", err, nil, false)

	if s := e.srv.Stats(); s.APIKeyLeaks != 0 {
		t.Errorf("%d Key Protect requests carried an API key", s.APIKeyLeaks)
	}
}

// TestThrottledRun: one request in ten throttled, 200 DEKs wrapped and
// unwrapped through the decorators the pipeline uses: all succeed.
func TestThrottledRun(t *testing.T) {
	e := setup(t)
	k := keys.WithRetry(keys.WithRate(e.open(t, e.beta, e.key), 1000), keys.RetryPolicy{Attempts: 8, Base: time.Millisecond})
	e.srv.SetFaults(kpfake.Faults{Throttle: 0.10})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < 200; i += 8 {
				b := keys.ByID(fmt.Sprintf("dek-%d", i))
				d := newDEK(t, byte(i))
				w, err := k.Wrap(context.Background(), b, d)
				if err == nil {
					var got *keys.DEK
					if got, err = k.Unwrap(context.Background(), b, ibmkp.Mechanism, w); err == nil && !bytes.Equal(got.Bytes(), d.Bytes()) {
						err = errors.New("different key back")
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
	s := e.srv.Stats()
	if s.Throttled < 20 {
		t.Errorf("only %d requests of %d were throttled", s.Throttled, s.Requests)
	}
	t.Logf("%d requests, %d throttled", s.Requests, s.Throttled)
}

// TestNoCredentialLeaks: the API key reaches IAM only, and no error,
// printed KEK or preflight check holds it.
func TestNoCredentialLeaks(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	k := e.open(t, e.beta, e.key)
	var texts []string
	add := func(err error) {
		if err != nil {
			texts = append(texts, err.Error(), fmt.Sprintf("%+v %#v", err, err))
		}
	}
	texts = append(texts, fmt.Sprintf("%v %+v %#v %s %q %x", k, k, k, k, k, k), k.URI(), keys.Custodian(k))
	checks, _ := keys.Preflight(ctx, k, true, true)
	for _, c := range checks {
		texts = append(texts, c.Name, c.Info)
	}
	e.srv.SetState(e.key, kpfake.Suspended)
	checks, _ = keys.Preflight(ctx, k, true, true)
	for _, c := range checks {
		texts = append(texts, c.Name, c.Info)
	}
	_, err := k.Wrap(ctx, keys.ByID("x"), newDEK(t, 4))
	add(err)
	e.srv.SetState(e.key, kpfake.Active)
	for _, st := range []int{400, 401, 403, 429, 500} {
		e.srv.RevokeTokens()
		e.srv.FailNext("token", st, 2)
		_, err := k.Wrap(ctx, keys.ByID("x"), newDEK(t, 4))
		add(err)
		e.srv.FailNext("wrap", st, 2)
		_, err = k.Wrap(ctx, keys.ByID("x"), newDEK(t, 4))
		add(err)
	}
	t.Setenv(apiKeyEnv, testAPIKey+"-wrong")
	_, err = keys.Open(ctx, e.ref(e.beta, e.key), keys.Options{})
	add(err)
	checks, _ = keys.Preflight(ctx, k, true, true)
	for _, c := range checks {
		texts = append(texts, c.Name, c.Info)
	}
	if len(texts) < 20 {
		t.Fatalf("only %d texts collected", len(texts))
	}
	for _, s := range texts {
		if strings.Contains(s, testAPIKey) || strings.Contains(s, "kpfake.") /* a bearer token */ {
			t.Errorf("a credential leaked: %q", s)
		}
	}
	if n := e.srv.Stats().APIKeyLeaks; n != 0 {
		t.Errorf("%d Key Protect requests carried the API key", n)
	}
}

func TestPreflight(t *testing.T) {
	e := setup(t)
	k := e.open(t, e.beta, e.key)
	ok := func(needWrap, needUnwrap bool) (bool, string) {
		checks, has := keys.Preflight(t.Context(), k, needWrap, needUnwrap)
		if !has || len(checks) == 0 {
			t.Fatal("no preflight")
		}
		var fails []string
		for _, c := range checks {
			if !c.OK {
				fails = append(fails, c.Name+": "+c.Info)
			}
		}
		return len(fails) == 0, strings.Join(fails, "; ")
	}
	for _, c := range []struct {
		state              int
		needWrap, okWanted bool
	}{
		{kpfake.Active, true, true},
		{kpfake.Deactivated, false, true},
		{kpfake.Deactivated, true, false},
		{kpfake.Suspended, false, false},
		{kpfake.Destroyed, false, false},
	} {
		e.srv.SetState(e.key, c.state)
		if got, why := ok(c.needWrap, true); got != c.okWanted {
			t.Errorf("state %d, needWrap %v: preflight OK %v (%s), want %v", c.state, c.needWrap, got, why, c.okWanted)
		}
	}
	e.srv.SetState(e.key, kpfake.Active)
	e.srv.RevokeTokens()
	e.srv.FailNext("token", 400, 1)
	if got, _ := ok(false, true); got {
		t.Error("preflight passes when IAM refuses the API key")
	}
}

func ExampleParseURI() {
	r, err := ibmkp.ParseURI("ibmkp:endpoint=https://us-south.kms.cloud.ibm.com;instance=0c1d2e3f-0000-4000-8000-000000000001;key=7a8b9c0d-0000-4000-8000-000000000002?apikey-source=file:/run/secrets/ibmcloud-api-key")
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Canonical())
	aad, _ := ibmkp.AAD(keys.ByID("tenant-42"))
	fmt.Println(aad)
	// Output:
	// ibmkp:region=us-south;instance=0c1d2e3f-0000-4000-8000-000000000001;key=7a8b9c0d-0000-4000-8000-000000000002
	// [rekey:dek_id=tenant-42]
}
