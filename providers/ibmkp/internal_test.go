package ibmkp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"rekey/providers/ibmkp/kpfake"
	"rekey/providers/keys"
)

func TestKeyActionBody(t *testing.T) {
	for _, c := range []struct {
		pt  []byte
		ct  string
		aad []string
	}{
		{[]byte("0123456789abcdef"), "", nil},
		{[]byte("0123456789abcdef"), "", []string{"rekey:dek_id=\"x\"", "ü\n"}},
		{nil, "QUJD", nil},
		{nil, "QUJD", []string{"a"}},
		{nil, "", []string{"a"}},
		{nil, "", nil},
	} {
		body := keyAction(c.pt, c.ct, c.aad)
		var got struct {
			Plaintext  []byte   `json:"plaintext"`
			Ciphertext string   `json:"ciphertext"`
			AAD        []string `json:"aad"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Errorf("keyAction(%q, %q, %q) = %s: %v", c.pt, c.ct, c.aad, body, err)
			continue
		}
		if string(got.Plaintext) != string(c.pt) || got.Ciphertext != c.ct || strings.Join(got.AAD, "|") != strings.Join(c.aad, "|") {
			t.Errorf("keyAction(%q, %q, %q) = %s", c.pt, c.ct, c.aad, body)
		}
		aadJSON, _ := json.Marshal(c.aad)
		if len(c.aad) == 0 {
			aadJSON = nil
		}
		if want := 48 + base64.StdEncoding.EncodedLen(len(c.pt)) + len(c.ct) + len(aadJSON); cap(body) != want {
			t.Errorf("keyAction's buffer has capacity %d, want %d: it grew, leaving a copy behind", cap(body), want)
		}
	}
}

// TestSlow: an answer slower than the caller's context is the caller's
// deadline (permanent); one slower than requestTimeout is retryable.
func TestSlow(t *testing.T) {
	srv := kpfake.New(t)
	srv.AddAPIKey("kpfake-slow-api-key")
	t.Setenv("REKEY_TEST_IBM_SLOW", "kpfake-slow-api-key")
	id := srv.CreateKey("slow")
	k, err := Open(t.Context(), "ibmkp:endpoint="+srv.URL+";instance=slow;key="+id+"?apikey-source=env:REKEY_TEST_IBM_SLOW&iam-endpoint="+srv.IAMEndpoint(), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := keys.NewDEK(make([]byte, 32))
	srv.SetFaults(kpfake.Faults{Slow: 1, Delay: 300 * time.Millisecond})

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = k.Wrap(ctx, keys.ByID("s"), d)
	if !errors.Is(err, context.DeadlineExceeded) || keys.IsRetryable(err) {
		t.Errorf("wrap past the caller's deadline: %v (retryable %v), want DeadlineExceeded, permanent", err, keys.IsRetryable(err))
	}

	defer func(d time.Duration) { requestTimeout = d }(requestTimeout)
	requestTimeout = 50 * time.Millisecond
	k.hc = newClient()
	_, err = k.Wrap(t.Context(), keys.ByID("s"), d)
	if err == nil || !keys.IsRetryable(err) {
		t.Errorf("wrap past the request timeout: %v, want a retryable error", err)
	}
	srv.SetFaults(kpfake.Faults{})
	if _, err := k.Wrap(t.Context(), keys.ByID("s"), d); err != nil {
		t.Errorf("wrap once the service is quick again: %v", err)
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"ibmkp:region=us-south;instance=i-1;key=k-1?apikey-source=env:X&key-ring=r",
		"ibmkp:endpoint=https://h.example:443;instance=i;key=k?iam-endpoint=https://iam.example/x",
		"ibmkp:endpoint=http://[::1]:80;key=k;instance=i",
		"ibmkp:region=us-south;instance=i;key=k#x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, keys.ErrBadURI) {
				t.Fatalf("ParseURI(%q): %v is not ErrBadURI", s, err)
			}
			return
		}
		c := r.Canonical()
		if strings.ContainsAny(c, "?#") {
			t.Fatalf("canonical %q of %q has a query or fragment", c, s)
		}
		again, err := ParseURI(c)
		if err != nil || again.Canonical() != c || again.custodian() != r.custodian() {
			t.Fatalf("canonical %q of %q does not parse back to itself: %v", c, s, err)
		}
	})
}

// TestTokenRefreshFailure: when IAM fails an early refresh, the token in
// hand is used until it expires, and the refresh is not tried on every
// call meanwhile.
func TestTokenRefreshFailure(t *testing.T) {
	srv := kpfake.New(t)
	srv.AddAPIKey("kpfake-refresh-api-key")
	ts := &tokenSource{url: srv.IAMEndpoint(), apikey: Secret{"kpfake-refresh-api-key"}, hc: newClient()}
	tok, err := ts.token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ts.refresh = time.Now().Add(-time.Second) // due for renewal, not expired
	srv.FailNext("token", 503, 1)
	if got, err := ts.token(t.Context()); err != nil || got != tok {
		t.Fatalf("token during an IAM outage: %v (same token: %v)", err, got == tok)
	}
	if got, err := ts.token(t.Context()); err != nil || got != tok || srv.Stats().Tokens != 1 {
		t.Errorf("token right after a failed refresh: %v, %d fetched (want the old token, no new fetch)", err, srv.Stats().Tokens)
	}
	ts.expiry = time.Now().Add(-time.Second)
	srv.FailNext("token", 503, 1)
	if _, err := ts.token(t.Context()); err == nil || !keys.IsRetryable(err) {
		t.Errorf("token after expiry with IAM down: %v, want a retryable error", err)
	}
	if got, err := ts.token(t.Context()); err != nil || got == tok {
		t.Errorf("token once IAM is back: %v (a new token: %v)", err, got != tok)
	}
}
