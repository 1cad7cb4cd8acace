//go:build linux

package localkms_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

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

// TestRun starts a server the way a command does (Run, Close), reaches it
// through a child's environment (Environ), and checks that Close stops it.
func TestRun(t *testing.T) {
	if _, ok := localkms.Binary(); !ok {
		if os.Getenv("CI") != "" {
			t.Fatal("local-kms is not installed and CI is set: " + localkms.Install)
		}
		t.Skip("local-kms is not installed (make local-kms)")
	}
	ctx := context.Background()
	s, err := localkms.Run(ctx, t.TempDir())
	if errors.Is(err, localkms.ErrNoNamespace) && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Client().DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/rekey-test-1")}); err != nil {
		t.Fatalf("describe: %v", err)
	}
	env := s.Environ([]string{"AWS_PROFILE=prod", "AWS_ENDPOINT_URL_KMS=https://kms.example", "HOME=/x"})
	joined := strings.Join(env, "\n")
	for _, want := range []string{"HOME=/x", "AWS_ACCESS_KEY_ID=" + localkms.AccessKeyID, "AWS_CONFIG_FILE="} {
		if !strings.Contains(joined, want) {
			t.Errorf("Environ lacks %q:\n%s", want, joined)
		}
	}
	for _, gone := range []string{"AWS_PROFILE=", "AWS_ENDPOINT_URL_KMS="} {
		if strings.Contains(joined, gone) {
			t.Errorf("Environ keeps %q:\n%s", gone, joined)
		}
	}
	ep := s.Endpoint()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(ep, "http://"), time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still answers after Close", ep)
	}
	s.Close() // a second Close is harmless
}
