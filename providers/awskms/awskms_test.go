//go:build linux

package awskms_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"rekey/providers/awskms"
	"rekey/providers/awskms/localkms"
	"rekey/providers/keys"
	"rekey/providers/keystest"
)

// missingKey is a key id no server holds.
const missingKey = "0a1b2c3d-0000-4000-8000-0000000000ff"

// TestConformance runs the suite every key backend passes against
// local-kms: Open is key-1 by its ARN, Other key-2 by its alias.
func TestConformance(t *testing.T) {
	s := localkms.Start(t)
	keystest.Run(t, keystest.Backend{
		Mechanisms: []string{awskms.Mechanism},
		Open:       keystest.OpenRef(s.KeyURI(localkms.Key1)),
		Other:      keystest.OpenRef(s.KeyURI("alias/rekey-test-2")),
		Missing:    s.KeyURI(missingKey),
		Binds:      func(string) bool { return true },
		Secrets:    [][]byte{[]byte(localkms.SecretAccessKey)},
		Private:    []string{s.Endpoint(), "endpoint", "profile"},
		Transient: func(t *testing.T, mech string) keys.KEK {
			f := &faults{pick: once("Decrypt", "ThrottlingException", 400)}
			return openWith(t, s.KeyURI(localkms.Key1), f)
		},
	})
}

// faults is an http.Client transport that answers some requests itself,
// as AWS KMS does when it throttles or fails: HTTP status and
// {"__type": code} in the documented JSON error shape, or a reset
// connection when the code is "reset".
type faults struct {
	mu   sync.Mutex
	pick func(op string) (code string, status int)
	ops  []string
	hits int
}

func (f *faults) RoundTrip(r *http.Request) (*http.Response, error) {
	_, op, _ := strings.Cut(r.Header.Get("X-Amz-Target"), ".")
	f.mu.Lock()
	f.ops = append(f.ops, op)
	code, status := f.pick(op)
	if code != "" {
		f.hits++
	}
	f.mu.Unlock()
	switch code {
	case "":
		return http.DefaultTransport.RoundTrip(r)
	case "reset":
		return nil, syscall.ECONNRESET
	}
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	body := fmt.Sprintf(`{"__type":%q,"message":"injected: do-not-print-this-message"}`, code)
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/x-amz-json-1.1"}, "X-Amzn-Requestid": {"req-injected-1"}},
		Body:   io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: r,
	}, nil
}

// once fails the first call of op with code.
func once(op, code string, status int) func(string) (string, int) {
	done := false
	return func(o string) (string, int) {
		if o == op && !done {
			done = true
			return code, status
		}
		return "", 0
	}
}

func openWith(t testing.TB, uri string, f *faults) *awskms.KEK {
	t.Helper()
	k, err := awskms.Config{HTTPClient: &http.Client{Transport: f}}.Open(context.Background(), uri, keys.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", keys.Redact(uri), err)
	}
	return k
}

func open(t testing.TB, uri string) *awskms.KEK {
	t.Helper()
	k, err := awskms.Open(context.Background(), uri, keys.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", keys.Redact(uri), err)
	}
	return k
}

func dek(t testing.TB, b byte) *keys.DEK {
	t.Helper()
	d, err := keys.NewDEK(bytes.Repeat([]byte{b}, keys.DEKSize))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestParseRef(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	const arn = "arn:aws:kms:eu-west-1:111122223333:key/" + id
	for _, c := range []struct{ uri, canonical, custodian string }{
		{"awskms:" + arn, "awskms:" + arn, "awskms|eu-west-1|111122223333"},
		{"awskms:" + arn + "?endpoint=https://vpce-1.kms.eu-west-1.vpce.amazonaws.com&profile=prod", "awskms:" + arn, "awskms|eu-west-1|111122223333"},
		{"awskms:" + arn + "?region=eu-west-1", "awskms:" + arn, "awskms|eu-west-1|111122223333"},
		{"awskms:arn:aws:kms:eu-west-1:111122223333:alias/rekey-prod", "awskms:arn:aws:kms:eu-west-1:111122223333:alias/rekey-prod", "awskms|eu-west-1|111122223333"},
		{"awskms:arn:aws-cn:kms:cn-north-1:111122223333:key/" + id, "awskms:arn:aws-cn:kms:cn-north-1:111122223333:key/" + id, "awskms|cn-north-1|111122223333"},
		{"awskms:alias/rekey-prod?region=eu-west-1", "awskms:eu-west-1:alias/rekey-prod", "awskms|eu-west-1|"},
		{"awskms:alias/team/rekey:prod?region=us-gov-west-1", "awskms:us-gov-west-1:alias/team/rekey:prod", "awskms|us-gov-west-1|"},
		{"awskms:eu-west-1:alias/rekey-prod", "awskms:eu-west-1:alias/rekey-prod", "awskms|eu-west-1|"},
		{"awskms:" + id + "?region=eu-west-1&endpoint=http://127.0.0.1:4599", "awskms:eu-west-1:" + id, "awskms|eu-west-1|"},
		{"awskms:mrk-1234abcd12ab34cd56ef1234567890ab?region=ap-southeast-2", "awskms:ap-southeast-2:mrk-1234abcd12ab34cd56ef1234567890ab", "awskms|ap-southeast-2|"},
		{"awskms:alias/rekey-prod", "awskms:alias/rekey-prod", "awskms||"},
	} {
		r, err := keys.ParseRef(c.uri)
		if err != nil {
			t.Errorf("ParseRef(%s): %v", c.uri, err)
			continue
		}
		if r.Canonical != c.canonical || r.Redacted != c.canonical || r.Custodian != c.custodian {
			t.Errorf("ParseRef(%s) = %q, %q, %q; want %q, %q", c.uri, r.Canonical, r.Redacted, r.Custodian, c.canonical, c.custodian)
		}
		if again, err := keys.ParseRef(r.Canonical); err != nil || again.Canonical != r.Canonical {
			t.Errorf("ParseRef(%s) = %q, %v: not canonical", r.Canonical, again.Canonical, err)
		}
	}
	t.Setenv("AWS_REGION", "eu-central-1")
	if r, _ := keys.ParseRef("awskms:alias/x"); r.Canonical != "awskms:eu-central-1:alias/x" {
		t.Errorf("with AWS_REGION set, canonical %q", r.Canonical)
	}
	for _, c := range []struct{ uri, want string }{
		{"awskms:", "not a key ARN"},
		{"awskms:rekey-prod?region=eu-west-1", "not a key ARN, alias/NAME or key id"},
		{"awskms:alias/x?region=Europe", "not an AWS region"},
		{"awskms:alias/x?region=eu-west-1&region=eu-west-2", "given 2 times"},
		{"awskms:" + arn + "?region=eu-west-2", "contradicts"},
		{"awskms:eu-west-1:alias/x?region=eu-west-2", "contradicts"},
		{"awskms:arn:aws:s3:::bucket", "not a KMS key or alias ARN"},
		{"awskms:arn:aws:kms:eu-west-1:1111:key/" + id, "not a KMS key or alias ARN"},
		{"awskms:arn:aws:kms:eu-west-1:111122223333:key/nope", "not a KMS key id"},
		{"awskms:alias/x?region=eu-west-1&secret_access_key=hunter2", "unknown parameter \"secret_access_key\""},
		{"awskms:alias/x?region=eu-west-1&endpoint=https://AKIA:hunter2@kms.example", "carries credentials"},
		{"awskms:alias/x?region=eu-west-1&endpoint=ftp://kms.example", "want http"},
		{"awskms:alias/x?region=eu-west-1&endpoint=https://kms.example/path?x=1", "scheme://host"},
		{"awskms:alias/x?profile=a%20b", "not a profile name"},
		{"awskms:alias/x#frag", "fragment"},
	} {
		_, err := keys.ParseRef(c.uri)
		switch {
		case err == nil:
			t.Errorf("ParseRef(%s) succeeded", c.uri)
		case !errors.Is(err, keys.ErrBadURI) || !strings.Contains(err.Error(), c.want):
			t.Errorf("ParseRef(%s): %v; want ErrBadURI saying %q", c.uri, err, c.want)
		case strings.Contains(err.Error(), "hunter2"):
			t.Errorf("ParseRef(%s) prints the credential: %v", c.uri, err)
		}
	}
	if got := keys.Redact("awskms:alias/x?region=eu-west-1&endpoint=http://127.0.0.1:1&profile=p"); got != "awskms:eu-west-1:alias/x" {
		t.Errorf("Redact = %q", got)
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"awskms:alias/x?region=eu-west-1", "awskms:eu-west-1:alias/x", "awskms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?endpoint=http://127.0.0.1:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		r, err := awskms.ParseRef(uri)
		if err != nil {
			return
		}
		c := r.Canonical()
		if strings.ContainsAny(c, "?#") {
			t.Fatalf("canonical %q has a query", c)
		}
		if again, err := awskms.ParseRef(c); err != nil || again.Canonical() != c || again.Custodian() != r.Custodian() {
			t.Fatalf("ParseRef(%q) = %+v, %v: not canonical (from %q)", c, again, err, uri)
		}
	})
}

func TestEncryptionContext(t *testing.T) {
	for _, c := range []struct {
		b    keys.Binding
		want map[string]string
	}{
		{keys.Binding{}, nil},
		{keys.ByID("tenant-42"), map[string]string{"rekey:dek_id": "tenant-42"}},
		{keys.Binding{Context: map[string]string{"Department": "x"}}, map[string]string{"Department": "x"}},
		{keys.Binding{DEKID: "d", Context: map[string]string{"k": "v"}, AAD: []string{"a", ""}},
			map[string]string{"rekey:dek_id": "d", "k": "v", "rekey:aad:0": "a", "rekey:aad:1": ""}},
	} {
		got, err := awskms.EncryptionContext(c.b)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("EncryptionContext(%s) = %v, %v; want %v", c.b, got, err, c.want)
		}
	}
	if _, err := awskms.EncryptionContext(keys.Binding{Context: map[string]string{"rekey:dek_id": "x"}}); err == nil {
		t.Errorf("a context key with rekey's prefix was accepted: it would pass for keys.ByID(\"x\")")
	}
}

// TestOpen: a key found by alias records its ARN and still matches the
// alias; references that cannot be an aws-kms key are refused at Open.
func TestOpen(t *testing.T) {
	s := localkms.Start(t)
	ctx := context.Background()
	k := open(t, s.KeyURI("alias/rekey-test-1"))
	if want := "awskms:" + s.KeyARN(localkms.Key1); k.URI() != want {
		t.Errorf("URI() = %q, want the key ARN %q", k.URI(), want)
	}
	for _, ref := range []string{"awskms:" + s.Region() + ":alias/rekey-test-1", "awskms:" + s.KeyARN(localkms.Key1),
		"awskms:" + s.Region() + ":0a1b2c3d-0000-4000-8000-000000000001"} {
		if !keys.Matches(k, ref) {
			t.Errorf("the key opened by its alias does not match %s", ref)
		}
	}
	if keys.Matches(k, "awskms:"+s.KeyARN(localkms.Key2)) || keys.Matches(k, "awskms:us-east-1:alias/rekey-test-1") {
		t.Errorf("matches another key")
	}
	if got, want := keys.Custodian(k), "awskms|"+s.Region()+"|"+s.Account(); got != want {
		t.Errorf("custodian %q, want %q", got, want)
	}
	if _, err := awskms.Open(ctx, s.KeyURI(localkms.Key1)+"&profile="+localkms.Profile, keys.Options{Wrap: awskms.Mechanism}); err != nil {
		t.Errorf("open with profile=%s: %v", localkms.Profile, err)
	}
	// Without kms:DescribeKey the key is used as named.
	denied := openWith(t, s.KeyURI("alias/rekey-test-1"), &faults{pick: once("DescribeKey", "AccessDeniedException", 400)})
	if want := "awskms:" + s.Region() + ":alias/rekey-test-1"; denied.URI() != want {
		t.Errorf("URI() without DescribeKey = %q, want %q", denied.URI(), want)
	}
	if w, err := denied.Wrap(ctx, keys.ByID("x"), dek(t, 3)); err != nil {
		t.Errorf("wrap with a key that may not be described: %v", err)
	} else if _, err := k.Unwrap(ctx, keys.ByID("x"), awskms.Mechanism, w); err != nil {
		t.Errorf("unwrap by ARN of a wrap by alias: %v", err)
	}
	sign, err := s.Client().CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		uri  string
		opts keys.Options
		want error
	}{
		{s.KeyURI(localkms.Key1), keys.Options{Wrap: "aes-gcm"}, keys.ErrMechanism},
		{s.KeyURI(*sign.KeyMetadata.KeyId), keys.Options{}, keys.ErrMechanism},
		{s.KeyURI(missingKey), keys.Options{}, keys.ErrKeyNotFound},
		{"awskms:alias/rekey-test-1?endpoint=" + s.Endpoint(), keys.Options{}, keys.ErrBadURI}, // no region anywhere
		{s.KeyURI(localkms.Key1) + "&profile=nope", keys.Options{}, keys.ErrAuthFailed},
	} {
		k, err := awskms.Open(ctx, c.uri, c.opts)
		if !errors.Is(err, c.want) || k != nil {
			t.Errorf("Open(%s, %+v) = %v, %v; want %v", keys.Redact(c.uri), c.opts, k, err, c.want)
		}
	}
	// No credentials anywhere in the chain: a fatal authentication error.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err = awskms.Open(ctx, s.KeyURI(localkms.Key1), keys.Options{})
	if !errors.Is(err, keys.ErrAuthFailed) || keys.IsRetryable(err) {
		t.Errorf("Open without credentials: %v; want ErrAuthFailed, permanent", err)
	}
	t.Logf("without credentials: %v", err)
}

// TestDisabledKey: a disabled key fails wrap and unwrap with
// ErrNotPermitted (fatal: the run stops), and Preflight says why.
func TestDisabledKey(t *testing.T) {
	s := localkms.Start(t)
	ctx := context.Background()
	c := s.Client()
	made, err := c.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	k := open(t, s.KeyURI(*made.KeyMetadata.KeyId))
	d := dek(t, 7)
	w, err := k.Wrap(ctx, keys.ByID("d"), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: made.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	_, werr := k.Wrap(ctx, keys.ByID("d"), d)
	_, uerr := k.Unwrap(ctx, keys.ByID("d"), awskms.Mechanism, w)
	_, gerr := keys.Generate(ctx, k)
	for what, err := range map[string]error{"wrap": werr, "unwrap": uerr, "generate": gerr} {
		if !errors.Is(err, keys.ErrNotPermitted) || !keys.IsFatal(err) || keys.IsRetryable(err) {
			t.Errorf("%s with a disabled key: %v; want ErrNotPermitted, fatal, permanent", what, err)
		}
		if err != nil && (!strings.Contains(err.Error(), "DisabledException") || !strings.Contains(err.Error(), k.URI()) || !strings.Contains(err.Error(), "enable-key")) {
			t.Errorf("%s with a disabled key: %q should name the code, the key and the fix", what, err)
		}
	}
	checks, _ := keys.Preflight(ctx, keys.WithRetry(k, keys.RetryPolicy{}), true, true)
	if !failed(checks, "Disabled") {
		t.Errorf("Preflight of a disabled key: %+v; want a failed check saying Disabled", checks)
	}
	if _, err := c.EnableKey(ctx, &kms.EnableKeyInput{KeyId: made.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	if got, err := k.Unwrap(ctx, keys.ByID("d"), awskms.Mechanism, w); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Errorf("unwrap after enabling the key again: %v", err)
	}
	checks, _ = keys.Preflight(ctx, k, false, true)
	t.Logf("unwrap-only preflight: %+v", checks)
	if len(checks) != 3 || !checks[2].OK {
		t.Errorf("unwrap-only Preflight: %+v; want credentials, key and a Decrypt check that passes or warns", checks)
	}
}

func failed(checks []keys.Check, word string) bool {
	for _, c := range checks {
		if !c.OK && strings.Contains(c.Info, word) {
			return true
		}
	}
	return false
}

// TestClassification injects AWS KMS's documented error answers and
// checks what the runner would do with each.
func TestClassification(t *testing.T) {
	s := localkms.Start(t)
	ctx := context.Background()
	w, err := open(t, s.KeyURI(localkms.Key1)).Wrap(ctx, keys.ByID("c"), dek(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	const (
		retry = iota
		fatal
		record // fails one record: neither retryable nor fatal
	)
	for _, c := range []struct {
		code   string
		status int
		want   error
		class  int
	}{
		{"ThrottlingException", 400, keys.ErrThrottled, retry},
		{"LimitExceededException", 400, keys.ErrThrottled, retry},
		{"TooManyRequests", 429, keys.ErrThrottled, retry},
		{"KMSInternalException", 500, nil, retry},
		{"ServiceUnavailable", 503, nil, retry},
		{"DependencyTimeoutException", 503, nil, retry},
		{"KeyUnavailableException", 500, nil, retry},
		{"reset", 0, nil, retry},
		{"NotFoundException", 400, keys.ErrKeyNotFound, fatal},
		{"DisabledException", 400, keys.ErrNotPermitted, fatal},
		{"KMSInvalidStateException", 400, keys.ErrNotPermitted, fatal},
		{"AccessDeniedException", 400, keys.ErrNotPermitted, fatal},
		{"UnrecognizedClientException", 400, keys.ErrAuthFailed, fatal},
		{"InvalidSignatureException", 400, keys.ErrAuthFailed, fatal},
		{"ExpiredTokenException", 400, keys.ErrAuthFailed, fatal},
		{"InvalidKeyUsageException", 400, keys.ErrMechanism, fatal},
		{"InvalidCiphertextException", 400, keys.ErrUnwrapFailed, record},
		{"IncorrectKeyException", 400, keys.ErrUnwrapFailed, record},
	} {
		f := &faults{pick: once("Decrypt", c.code, c.status)}
		_, err := openWith(t, s.KeyURI(localkms.Key1), f).Unwrap(ctx, keys.ByID("c"), awskms.Mechanism, w)
		switch {
		case err == nil:
			t.Errorf("%s: no error", c.code)
			continue
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: %v; want %v", c.code, err, c.want)
		case c.class == retry && !keys.IsRetryable(err),
			c.class == fatal && (!keys.IsFatal(err) || keys.IsRetryable(err)),
			c.class == record && (keys.IsFatal(err) || keys.IsRetryable(err)):
			t.Errorf("%s: retryable %v, fatal %v; want class %d: %v", c.code, keys.IsRetryable(err), keys.IsFatal(err), c.class, err)
		}
		if strings.Contains(err.Error(), "do-not-print") {
			t.Errorf("%s: the service's message is copied: %v", c.code, err)
		}
		if c.code != "reset" && !strings.Contains(err.Error(), "req-injected-1") {
			t.Errorf("%s: the request id is missing: %v", c.code, err)
		}
	}
}

// TestThrottledRun: 10% of the cryptographic requests throttled, 200
// wraps and unwraps through the decorators rekey uses all succeed.
func TestThrottledRun(t *testing.T) {
	s := localkms.Start(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	f := &faults{pick: func(op string) (string, int) {
		if (op == "Encrypt" || op == "Decrypt") && rng.Float64() < 0.1 {
			return "ThrottlingException", 400
		}
		return "", 0
	}}
	policy := keys.RetryPolicy{Attempts: 8, Base: time.Millisecond}
	for name, k := range map[string]keys.KEK{
		"RoundTripper": openWith(t, s.KeyURI(localkms.Key1), f),
		"proxy":        open(t, s.KeyURI(localkms.Key2)),
	} {
		t.Run(name, func(t *testing.T) {
			if name == "proxy" {
				s.Throttle(0.1)
				defer s.Throttle(0)
			}
			dk := keys.WithRetry(keys.WithRate(k, 2000), policy)
			var wg sync.WaitGroup
			errs := make(chan error, 200)
			for i := range 200 {
				wg.Go(func() {
					b, d := keys.ByID(fmt.Sprintf("t-%d", i)), dek(t, byte(i))
					w, err := dk.Wrap(ctx, b, d)
					if err == nil {
						var got *keys.DEK
						if got, err = dk.Unwrap(ctx, b, awskms.Mechanism, w); err == nil && !bytes.Equal(got.Bytes(), d.Bytes()) {
							err = errors.New("unwrapped a different key")
						}
					}
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("a throttled run lost a DEK: %v", err)
				}
			}
		})
	}
	_, throttled := s.Counts()
	t.Logf("throttled: %d of %d requests (RoundTripper), %d (proxy)", f.hits, len(f.ops), throttled)
	if f.hits < 10 || throttled < 10 {
		t.Errorf("throttled %d (RoundTripper) and %d (proxy) of 400 requests each; want about 40", f.hits, throttled)
	}
}

// TestReEncrypt: Rewrap moves a DEK between two keys of one KMS with
// ReEncrypt, rebinding it; it refuses a wrong source binding; across
// regions or credentials it is not offered.
func TestReEncrypt(t *testing.T) {
	s := localkms.Start(t)
	ctx := context.Background()
	f := &faults{pick: func(string) (string, int) { return "", 0 }}
	src := openWith(t, s.KeyURI(localkms.Key1), f)
	dst := open(t, s.KeyURI("alias/rekey-test-2"))
	d := dek(t, 9)
	sb := keys.ByID("r-1")
	db := keys.Binding{DEKID: "r-1", Context: map[string]string{"tenant": "42"}, AAD: []string{"x"}}
	w, err := src.Wrap(ctx, sb, d)
	if err != nil {
		t.Fatal(err)
	}
	if !keys.CanRewrap(src, keys.WithRate(dst, 100), awskms.Mechanism) {
		t.Fatalf("CanRewrap between two keys of one KMS is false")
	}
	res, err := keys.Rewrap(ctx, keys.WithRetry(src, keys.RetryPolicy{}), keys.RewrapRequest{Src: sb, SrcMech: awskms.Mechanism, Wrapped: w, Dst: dst, DstB: db})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verified || res.Proof != "" {
		t.Errorf("Rewrap claims a check KMS cannot do: %+v", res)
	}
	if !strings.Contains(strings.Join(f.ops, ","), "ReEncrypt") || strings.Contains(strings.Join(f.ops, ","), "Decrypt") {
		t.Errorf("requests %v: want ReEncrypt and no Decrypt", f.ops)
	}
	if got, err := dst.Unwrap(ctx, db, awskms.Mechanism, res.Wrapped); err != nil || !bytes.Equal(got.Bytes(), d.Bytes()) {
		t.Errorf("the target cannot unwrap the rewrapped DEK with its new binding: %v", err)
	}
	if _, err := dst.Unwrap(ctx, sb, awskms.Mechanism, res.Wrapped); !errors.Is(err, keys.ErrUnwrapFailed) {
		t.Errorf("the rewrapped DEK unwraps with its old binding: %v", err)
	}
	_, err = keys.Rewrap(ctx, src, keys.RewrapRequest{Src: keys.ByID("r-2"), SrcMech: awskms.Mechanism, Wrapped: w, Dst: dst, DstB: db})
	if !errors.Is(err, keys.ErrUnwrapFailed) || keys.IsRetryable(err) {
		t.Errorf("Rewrap with a wrong source binding: %v; want ErrUnwrapFailed", err)
	}
	other := localkms.Start(t, localkms.Region("us-east-1"), localkms.Account("444455556666"))
	for what, to := range map[string]keys.KEK{
		"another region":   open(t, other.KeyURI(localkms.Key1)),
		"another profile":  open(t, s.KeyURI(localkms.Key2)+"&profile="+localkms.Profile),
		"another endpoint": open(t, strings.Replace(s.KeyURI(localkms.Key2), "127.0.0.1", "localhost", 1)),
	} {
		if keys.CanRewrap(src, to, awskms.Mechanism) {
			t.Errorf("CanRewrap to %s is true: ReEncrypt cannot reach it", what)
		}
		if _, err := keys.Rewrap(ctx, src, keys.RewrapRequest{Src: sb, SrcMech: awskms.Mechanism, Wrapped: w, Dst: to, DstB: db}); !errors.Is(err, keys.ErrNoRewrap) {
			t.Errorf("Rewrap to %s: %v; want ErrNoRewrap", what, err)
		}
	}
}

// TestGenerateDataKey: a DEK comes from GenerateDataKey with AES_256.
func TestGenerateDataKey(t *testing.T) {
	s := localkms.Start(t)
	f := &faults{pick: func(string) (string, int) { return "", 0 }}
	k := openWith(t, s.KeyURI(localkms.Key1), f)
	d, err := keys.Generate(context.Background(), keys.WithRetry(keys.WithRate(k, 100), keys.RetryPolicy{}))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Zero()
	if d.Len() != keys.DEKSize || bytes.Equal(d.Bytes(), make([]byte, keys.DEKSize)) {
		t.Errorf("generated %d bytes, or zeros", d.Len())
	}
	if got := f.ops[len(f.ops)-1]; got != "GenerateDataKey" {
		t.Errorf("last request %s, want GenerateDataKey", got)
	}
	if s := fmt.Sprintf("%v %+v", k, k); strings.Contains(s, localkms.SecretAccessKey) {
		t.Errorf("the printed KEK holds the secret key")
	}
}
