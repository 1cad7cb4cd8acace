package ibmkp

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"rekey/providers/keys"
)

// Secret holds an IBM Cloud API key. It prints as *** in every format.
type Secret struct{ v string }

func (Secret) String() string               { return "***" }
func (Secret) GoString() string             { return "***" }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte("***")) }
func (Secret) MarshalText() ([]byte, error) { return []byte("***"), nil }
func (s Secret) value() string              { return s.v }

// resolveAPIKey reads the API key from an apikey-source (env:VAR or
// file:/path), or from $IBMCLOUD_API_KEY when none is named. Its value
// never appears in an error.
func resolveAPIKey(src string) (Secret, error) {
	if src == "" {
		src = "env:" + DefaultAPIKeyEnv
	}
	var v string
	if name, ok := strings.CutPrefix(src, "env:"); ok {
		v = strings.TrimSpace(os.Getenv(name))
		if v == "" {
			return Secret{}, fmt.Errorf("%w: apikey-source %s: environment variable %s is not set (set it to an IBM Cloud API key, or name another source with ?apikey-source=env:VAR or file:/path)", keys.ErrAuthFailed, src, name)
		}
	} else {
		path := strings.TrimPrefix(strings.TrimPrefix(src, "file:"), "//")
		b, err := os.ReadFile(path)
		if err != nil {
			return Secret{}, fmt.Errorf("%w: apikey-source %s: %v", keys.ErrAuthFailed, src, err)
		}
		v = strings.TrimSpace(string(b))
		clear(b)
		if v == "" {
			return Secret{}, fmt.Errorf("%w: apikey-source %s: file is empty", keys.ErrAuthFailed, src)
		}
	}
	return Secret{v}, nil
}

// tokenSource exchanges an API key for IAM bearer tokens, caches the
// token and fetches a new one once 80% of its lifetime has passed (IBM's
// own SDKs do the same), so a request never carries a token about to
// expire. One fetch runs at a time; the other callers wait for it.
type tokenSource struct {
	url    string
	apikey Secret
	hc     *http.Client

	mu      sync.Mutex
	tok     string
	refresh time.Time // fetch a new token after this
	expiry  time.Time // the server's expiry, less a margin for clock skew
}

// Token sources are shared by every KEK using one API key at one IAM
// endpoint, so a process holds one token per credential.
var (
	sourcesMu sync.Mutex
	sources   = map[[32]byte]*tokenSource{}
)

func sharedSource(iamURL string, apikey Secret, hc *http.Client) *tokenSource {
	id := sha256.Sum256([]byte(iamURL + "\x00" + apikey.value()))
	sourcesMu.Lock()
	defer sourcesMu.Unlock()
	s := sources[id]
	if s == nil {
		s = &tokenSource{url: iamURL, apikey: apikey, hc: hc}
		sources[id] = s
	}
	return s
}

// token returns a valid bearer token.
func (s *tokenSource) token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.tok != "" && now.Before(s.refresh) && now.Before(s.expiry) {
		return s.tok, nil
	}
	tok, life, err := s.fetch(ctx)
	if err != nil {
		if s.tok != "" && now.Before(s.expiry) {
			// A failed early refresh: the old token still works; try again
			// later rather than on every call while IAM is down.
			s.refresh = now.Add(min(10*time.Second, s.expiry.Sub(now)/2))
			return s.tok, nil
		}
		return "", err
	}
	s.tok = tok
	s.refresh = now.Add(life * 4 / 5)
	s.expiry = now.Add(life - min(life/10, 30*time.Second))
	return s.tok, nil
}

// invalidate drops tok if it is still the cached token: the service
// refused it (revoked, or expired early), so the next call fetches anew.
func (s *tokenSource) invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == tok {
		s.tok = ""
	}
}

// iamError is IAM's error body; errorMessage is not copied into rekey's
// errors (only the code, which says enough and echoes nothing).
type iamError struct {
	ErrorCode string `json:"errorCode"`
}

func (s *tokenSource) fetch(ctx context.Context) (string, time.Duration, error) {
	what := "get an IAM token from " + s.url
	form := url.Values{"grant_type": {"urn:ibm:params:oauth:grant-type:apikey"}, "apikey": {s.apikey.value()}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, strings.NewReader(form))
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	status, body, err := send(ctx, s.hc, req)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", what, err)
	}
	defer clear(body)
	if status != http.StatusOK {
		var e iamError
		_ = json.Unmarshal(body, &e)
		code := ""
		if e.ErrorCode != "" {
			code = " " + e.ErrorCode
		}
		switch {
		case status == http.StatusTooManyRequests:
			return "", 0, keys.Retryable(fmt.Errorf("%s: HTTP 429%s: %w", what, code, keys.ErrThrottled))
		case status >= 500 && status != http.StatusNotImplemented:
			return "", 0, keys.Retryable(fmt.Errorf("%s: HTTP %d%s (IAM unavailable)", what, status, code))
		case status == http.StatusBadRequest || status == http.StatusUnauthorized || status == http.StatusForbidden:
			return "", 0, fmt.Errorf("%s: %w: HTTP %d%s (is the API key right, and not disabled? check apikey-source or $%s)", what, keys.ErrAuthFailed, status, code, DefaultAPIKeyEnv)
		}
		return "", 0, fmt.Errorf("%s: HTTP %d%s", what, status, code)
	}
	var t struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Expiration  int64  `json:"expiration"`
	}
	if err := json.Unmarshal(body, &t); err != nil || t.AccessToken == "" {
		return "", 0, keys.Retryable(fmt.Errorf("%s: the answer holds no access_token", what))
	}
	if t.TokenType != "" && !strings.EqualFold(t.TokenType, "Bearer") {
		return "", 0, fmt.Errorf("%s: token type %q, want Bearer", what, t.TokenType)
	}
	life := time.Duration(t.ExpiresIn) * time.Second
	if life <= 0 && t.Expiration > 0 {
		life = time.Until(time.Unix(t.Expiration, 0))
	}
	if life <= 0 {
		life = time.Minute
	}
	return t.AccessToken, life, nil
}
