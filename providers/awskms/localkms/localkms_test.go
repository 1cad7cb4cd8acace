//go:build linux

package localkms_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"rekey/providers/awskms/localkms"
)

// TestStart starts a server, uses its seeded keys and aliases, and checks
// that the emulator is reachable only through the proxy on 127.0.0.1.
func TestStart(t *testing.T) {
	s := localkms.Start(t)
	if !strings.HasPrefix(s.Endpoint(), "http://127.0.0.1:") {
		t.Fatalf("endpoint %s is not on 127.0.0.1", s.Endpoint())
	}
	ctx := context.Background()
	c := s.Client()
	for _, id := range []string{s.KeyARN(localkms.Key1), "alias/rekey-test-2"} {
		out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("describe %s: %v", id, err)
		}
		if !out.KeyMetadata.Enabled {
			t.Errorf("%s is not enabled", id)
		}
	}
	// local-kms listens on its own namespace's port 8080, not on this one.
	if c, err := net.Dial("tcp", "127.0.0.1:8080"); err == nil {
		c.Close()
		t.Logf("something listens on 127.0.0.1:8080 here (not local-kms: it runs in its own namespace)")
	}
	s.Throttle(1)
	_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(s.KeyARN(localkms.Key1)), Plaintext: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "ThrottlingException") {
		t.Fatalf("Throttle(1): Encrypt gave %v, want ThrottlingException", err)
	}
	if n, th := s.Counts(); n == 0 || th == 0 {
		t.Fatalf("Counts() = %d, %d", n, th)
	}
}
