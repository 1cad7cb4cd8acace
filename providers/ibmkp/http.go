package ibmkp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"rekey/providers/keys"
)

// requestTimeout bounds one HTTP exchange; a request that runs out of it
// is retryable (the caller's context, when it ends first, is not).
var requestTimeout = 30 * time.Second

// transport is shared by every KEK so that connections to an instance are
// reused across keys.
var transport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}()

// newClient follows no redirects: a request body may hold a plaintext DEK
// or the API key, and goes to the configured endpoint or nowhere.
func newClient() *http.Client {
	return &http.Client{
		Transport:     transport,
		Timeout:       requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// maxBody caps an answer: Key Protect's are a few hundred bytes.
const maxBody = 1 << 20

// send performs req and reads the answer. Connection failures and
// timeouts are retryable; the end of the caller's context is not.
func send(ctx context.Context, hc *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := hc.Do(req)
	if err == nil {
		defer resp.Body.Close()
		var body []byte
		body, err = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		if err == nil {
			if len(body) > maxBody {
				clear(body)
				return 0, nil, keys.Retryable(fmt.Errorf("HTTP %d answer larger than %d bytes", resp.StatusCode, maxBody))
			}
			return resp.StatusCode, body, nil
		}
	}
	if ctx.Err() != nil {
		return 0, nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return 0, nil, keys.Retryable(fmt.Errorf("no answer (retryable): %w", err))
}

// call sends one Key Protect request for the key and decodes a 2xx answer
// into out. path is "metadata" or "actions/<action>". A 401 on a cached
// token fetches a fresh token and sends once more: the token was revoked
// or expired early, which a new one mends; a second 401 is final.
func (k *KEK) call(ctx context.Context, op, method, path string, body []byte, out any) error {
	fail := func(err error) error { return fmt.Errorf("ibmkp: %s with %s: %w", op, k.uri, err) }
	for attempt := 0; ; attempt++ {
		tok, err := k.ts.token(ctx)
		if err != nil {
			return fail(err)
		}
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body) // no copy: the caller clears body
		}
		req, err := http.NewRequestWithContext(ctx, method, k.keyURL+"/"+path, rd)
		if err != nil {
			return fail(err)
		}
		corr := correlationID()
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("bluemix-instance", k.ref.Instance)
		req.Header.Set("correlation-id", corr)
		if k.ref.KeyRing != "" {
			req.Header.Set("x-kms-key-ring", k.ref.KeyRing)
		}
		if body != nil {
			req.Header.Set("Content-Type", keyActionType)
			req.Header.Set("Accept", keyActionType)
		} else {
			req.Header.Set("Accept", "application/json")
		}
		status, resp, err := send(ctx, k.hc, req)
		if err != nil {
			return fail(err)
		}
		if status == http.StatusUnauthorized && attempt == 0 {
			clear(resp)
			k.ts.invalidate(tok)
			continue
		}
		if status/100 == 2 {
			err = json.Unmarshal(resp, out)
			clear(resp)
			if err != nil {
				return fail(keys.Retryable(fmt.Errorf("malformed HTTP %d answer (correlation-id %s)", status, corr)))
			}
			return nil
		}
		err = classify(path, status, resp, corr, k.ref.Instance)
		clear(resp)
		return fail(err)
	}
}

const keyActionType = "application/vnd.ibm.kms.key_action+json"

func correlationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// kpError is Key Protect's error body. Only the reason codes are copied
// into rekey's errors: they say what happened and echo no input.
type kpError struct {
	Resources []struct {
		Reasons []struct {
			Code string `json:"code"`
		} `json:"reasons"`
	} `json:"resources"`
}

// classify maps a Key Protect refusal onto rekey's sentinels and retry
// classes.
func classify(path string, status int, body []byte, corr, instance string) error {
	var e kpError
	_ = json.Unmarshal(body, &e)
	var codes []string
	for _, r := range e.Resources {
		for _, c := range r.Reasons {
			if c.Code != "" {
				codes = append(codes, strings.TrimSpace(c.Code))
			}
		}
	}
	has := func(c string) bool {
		for _, x := range codes {
			if x == c {
				return true
			}
		}
		return false
	}
	detail := fmt.Sprintf("HTTP %d", status)
	if len(codes) > 0 {
		detail += " " + strings.Join(codes, ",")
	}
	detail += ", correlation-id " + corr
	unwrapping := path == "actions/unwrap" || path == "actions/rewrap"
	switch {
	case status == http.StatusTooManyRequests:
		return keys.Retryable(fmt.Errorf("%w: %s", keys.ErrThrottled, detail))
	case status >= 500 && status != http.StatusNotImplemented:
		return keys.Retryable(fmt.Errorf("Key Protect unavailable (retryable): %s", detail))
	case status == http.StatusUnauthorized || status == http.StatusForbidden || has("BEARER_SUB_EXTRACTION_ERR"):
		return fmt.Errorf("%w: %s (does the API key's service ID have a Key Protect role on instance %s? wrap, unwrap and rewrap need at least the Reader service role)", keys.ErrAuthFailed, detail, instance)
	case status == http.StatusNotFound:
		return fmt.Errorf("%w: %s (check key= and instance=, and key-ring= if set; an instance's keys are reached only at its own endpoint)", keys.ErrKeyNotFound, detail)
	case has("KEY_EXPIRED_ERR"):
		return fmt.Errorf("%w: %s (the key expired: it still unwraps and rewraps, but wraps no more)", keys.ErrNotPermitted, detail)
	case has("KEY_ROOT_REQ_ERR"):
		return fmt.Errorf("%w: %s (a standard key: Key Protect wraps only with root keys)", keys.ErrNotPermitted, detail)
	case status == http.StatusConflict || status == http.StatusGone || has("KEY_INVALID_STATE_ERR"):
		return fmt.Errorf("%w: %s (the key is disabled, expired or deleted: see its state with ibmcloud kp key show)", keys.ErrNotPermitted, detail)
	case unwrapping && (status == http.StatusBadRequest || status == http.StatusUnprocessableEntity):
		return fmt.Errorf("%w: %s (was the DEK wrapped by this key, with this binding?)", keys.ErrUnwrapFailed, detail)
	}
	return errors.New("Key Protect refused the request: " + detail)
}
