package alikms

import (
	"errors"
	"strings"
	"testing"
	"time"

	"rekey/providers/alikms/kmsfake"
	"rekey/providers/keys"
)

// TestTimeoutIsRetryable: an answer slower than the read timeout is a
// transient failure, not a bad wrapped key.
func TestTimeoutIsRetryable(t *testing.T) {
	defer func(ms int) { readTimeoutMS = ms }(readTimeoutMS)
	readTimeoutMS = 300
	g := kmsfake.NewGateway("cn-shanghai")
	defer g.Close()
	g.AddAccessKey("LTAI5tTimeout", "timeout-secret", "")
	t.Setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI5tTimeout")
	t.Setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "timeout-secret")
	k, err := keys.Open(t.Context(), "alikms:"+g.CreateKey()+"?region=cn-shanghai&endpoint="+g.Endpoint(), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := keys.NewDEK(make([]byte, 32))
	w, err := k.Wrap(t.Context(), keys.ByID("t"), d)
	if err != nil {
		t.Fatal(err)
	}
	g.SetFaults(kmsfake.Faults{Delay: time.Second})
	_, err = k.Unwrap(t.Context(), keys.ByID("t"), GatewayMech, w)
	if !keys.IsRetryable(err) || errors.Is(err, keys.ErrUnwrapFailed) {
		t.Errorf("a timed-out Decrypt: %v (retryable %v); want retryable, not ErrUnwrapFailed", err, keys.IsRetryable(err))
	}
	if _, err := k.Wrap(t.Context(), keys.ByID("t"), d); !keys.IsRetryable(err) || strings.Contains(err.Error(), "Plaintext=") || strings.Contains(err.Error(), "/?") {
		t.Errorf("a timed-out Encrypt: %v; want retryable, without the request's URL", err)
	}
	g.SetFaults(kmsfake.Faults{})
	if _, err := k.Unwrap(t.Context(), keys.ByID("t"), GatewayMech, w); err != nil {
		t.Errorf("Unwrap after a timeout: %v", err)
	}
}
