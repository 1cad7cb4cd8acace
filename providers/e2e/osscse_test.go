package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/aliyun/aliyun-oss-go-sdk/oss"
	osscrypto "github.com/aliyun/aliyun-oss-go-sdk/oss/crypto"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"rekey/hsmio/softhsm"
	"rekey/pipeline"
	"rekey/providers/internal/testserver"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// Issue 13, format 2: objects written by aliyun-oss-go-sdk's oss/crypto
// (AES-CTR content, key and IV each wrapped with RSA PKCS#1 v1.5) through
// the project's OSS test server, with an RSA master key held in SoftHSM
// (an application's MasterCipher on crypto11: the private key never leaves
// the token). rekey rewraps them to a second RSA key in SoftHSM in place,
// and re-encrypts them into new objects; oss/crypto reads every object
// back with the new key and fails with the old.

// hsmMaster is an application's OSS master cipher on a PKCS#11 RSA key.
type hsmMaster struct {
	pub     *rsa.PublicKey
	priv    crypto.Decrypter
	matDesc string
}

func (m hsmMaster) Encrypt(b []byte) ([]byte, error) {
	return rsa.EncryptPKCS1v15(rand.Reader, m.pub, b)
}
func (m hsmMaster) Decrypt(b []byte) ([]byte, error) {
	return m.priv.Decrypt(rand.Reader, b, &rsa.PKCS1v15DecryptOptions{})
}
func (m hsmMaster) GetWrapAlgorithm() string { return "RSA/NONE/PKCS1Padding" }
func (m hsmMaster) GetMatDesc() string       { return m.matDesc }

func newHSMMaster(t *testing.T, token, pin, label, matDesc string) hsmMaster {
	t.Helper()
	c, err := crypto11.Configure(&crypto11.Config{Path: softhsm.Module, TokenLabel: token, Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	k, err := c.FindKeyPair(nil, []byte(label))
	if err != nil || k == nil {
		t.Fatalf("find %s/%s: %v", token, label, err)
	}
	return hsmMaster{pub: k.Public().(*rsa.PublicKey), priv: k.(crypto.Decrypter), matDesc: matDesc}
}

func TestOSSClientSideEncryption(t *testing.T) {
	srv := testserver.OSSFake(t, "cse")
	t.Setenv("OSS_ACCESS_KEY_ID", "LTAIcse")
	t.Setenv("OSS_ACCESS_KEY_SECRET", "cse-oss-secret")
	t.Setenv("OSS_ENDPOINT", srv.Endpoint)
	t.Setenv("OSS_REGION", "cn-hangzhou")
	t.Setenv("REKEY_OSS_PATH_STYLE", "1")
	client, err := oss.New(srv.Endpoint, "LTAIcse", "cse-oss-secret")
	if err != nil {
		t.Fatal(err)
	}
	oldM := newHSMMaster(t, "source", "src-pin-1234", "kek-rsa", `{"key":"old"}`)
	newM := newHSMMaster(t, "target", "dst-pin-5678", "kek-rsa", `{"key":"new"}`)
	bucket := func(m hsmMaster) *osscrypto.CryptoBucket {
		b, err := osscrypto.GetCryptoBucket(client, "cse", osscrypto.CreateAesCtrCipher(m))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	get := func(b *osscrypto.CryptoBucket, key string) ([]byte, error) {
		rc, err := b.GetObject(key)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	oldB := bucket(oldM)
	plain := map[string][]byte{}
	names := []string{"data/a.bin", "data/with space/b+c%d.bin", "data/ünïcode/ключ.txt", "data/md5-recorded.bin", "data/big.bin", "data/md5-ok.bin"}
	for i, name := range names {
		pt := make([]byte, []int{5000, 1, 77, 4096, 2 << 20, 999}[i])
		_, _ = rand.Read(pt)
		var opts []oss.Option
		if strings.Contains(name, "md5") {
			// The writer records the plaintext's length and MD5.
			sum := md5.Sum(pt)
			opts = append(opts, oss.ContentLength(int64(len(pt))), oss.ContentMD5(base64.StdEncoding.EncodeToString(sum[:])))
		}
		if err := oldB.PutObject(name, bytes.NewReader(pt), opts...); err != nil {
			t.Fatalf("oss/crypto put %s: %v", name, err)
		}
		plain[name] = pt
	}
	root := t.TempDir()
	ctx := context.Background()
	srcKEK := env.KEK("source", "kek-rsa")
	dstKEK := env.KEK("target", "kek-rsa")
	run := func(t *testing.T, j *pipeline.Job) *schemas.Manifest {
		t.Helper()
		j.Defaults()
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		if r := pipeline.Plan(ctx, j, true); r.Failed() {
			t.Fatalf("plan refused: %+v", r.Checks)
		}
		ptestRun(t, j)
		return readJSON[schemas.Manifest](t, ledger.ManifestPath(j.Ledger, j.RunID))
	}

	t.Run("rewrap", func(t *testing.T) {
		j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "oss-rw",
			Source: pipeline.Side{Data: "oss://cse/data", KEK: srcKEK, Format: "oss-cse", FormatOptions: map[string]string{"matdesc": `{"key":"new"}`}},
			Target: pipeline.Side{KEK: dstKEK}, Ledger: filepath.Join(root, "ledger"), Workers: 2}
		m := run(t, j)
		if m.Totals.ObjectsMigrated != int64(len(plain)) || m.Totals.Failed != 0 {
			t.Fatalf("manifest %s %+v %+v", m.Status, m.Totals, m.Failures)
		}
		newB := bucket(newM)
		for name, pt := range plain {
			got, err := get(newB, name)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%s: oss/crypto with the new key reads %d bytes, %v", name, len(got), err)
			}
			if _, err := get(oldB, name); err == nil {
				t.Fatalf("%s: the old key still reads it", name)
			}
		}
		// rekey verify decrypts every object with the new key, not the old.
		if rep := verifyObjects(t, j, dstKEK); !rep.OK || rep.Totals.ObjectsMigrated != int64(len(plain)) {
			t.Fatalf("verify: %+v %+v", rep.Totals, rep.Failures)
		}
		if rep := verifyObjects(t, j, srcKEK); rep.OK || rep.Totals.ObjectsFailed != int64(len(plain)) {
			t.Fatalf("verify with the old key: %+v", rep.Totals)
		}
	})

	t.Run("reencrypt", func(t *testing.T) {
		// The object with a recorded MD5 gets a changed body: CTR has no
		// tag, the MD5 catches it; the others have nothing to check.
		bad := "data/md5-recorded.bin"
		b, err := client.Bucket("cse")
		if err != nil {
			t.Fatal(err)
		}
		h, err := b.GetObjectDetailedMeta(bad)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := b.GetObject(bad)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(rc)
		rc.Close()
		body[7] ^= 1
		var opts []oss.Option
		for k, v := range h {
			if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-oss-meta-") {
				opts = append(opts, oss.Meta(lk[len("x-oss-meta-"):], v[0]))
			}
		}
		if err := b.PutObject(bad, bytes.NewReader(body), opts...); err != nil {
			t.Fatal(err)
		}
		j := &pipeline.Job{Mode: schemas.ModeReencrypt, RunID: "oss-re",
			Source: pipeline.Side{Data: "oss://cse/data", KEK: dstKEK, Format: "oss-cse", FormatOptions: map[string]string{"matdesc": `{"key":"old"}`}},
			Target: pipeline.Side{Data: "oss://cse/re", KEK: srcKEK}, Ledger: filepath.Join(root, "ledger"), Workers: 2, MaxFailures: "1"}
		m := run(t, j)
		if m.Totals.ObjectsMigrated != int64(len(plain))-1 || m.Totals.ObjectsFailed != 1 || !strings.Contains(m.Failures[0].Error, "MD5") {
			t.Fatalf("manifest %s %+v %+v", m.Status, m.Totals, m.Failures)
		}
		rows, err := ledger.Read(ctx, j.Ledger, j.RunID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			// CTR has no tag: the ledger says when there was nothing to
			// check, and when the recorded MD5 was checked.
			want := schemas.ProofNone
			if strings.HasSuffix(r.Source, "md5-ok.bin") {
				want = schemas.ProofBody
			}
			if r.Status == schemas.StatusMigrated && r.Proof != want {
				t.Fatalf("%s: proof %q, want %q", r.Source, r.Proof, want)
			}
		}
		for name, pt := range plain {
			target := "re/" + strings.TrimPrefix(name, "data/")
			got, err := get(oldB, target)
			if name == bad {
				if err == nil {
					t.Fatalf("%s written although its MD5 failed", target)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%s: oss/crypto reads %d bytes (%v), want %d", target, len(got), err, len(pt))
			}
		}
		if rep := verifyObjects(t, j, srcKEK); !rep.OK || rep.Totals.ObjectsMigrated != int64(len(plain))-1 {
			t.Fatalf("verify: %+v %+v", rep.Totals, rep.Failures)
		}
	})
}

func ptestRun(t *testing.T, j *pipeline.Job) {
	t.Helper()
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, j.Spec()) })
}

// verifyObjects runs rekey verify on a job's objects (where the job left
// them) under kek, and returns the report.
func verifyObjects(t *testing.T, j *pipeline.Job, kek string) *transforms.VerifyReport {
	t.Helper()
	spec := j.VerifySpec(filepath.Join(t.TempDir(), "verify.json"))
	spec.TargetKEK = kek
	if j.Mode == schemas.ModeRewrap {
		spec.TargetData = j.Source.Data
	}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildVerify(s, spec) })
	return readJSON[transforms.VerifyReport](t, spec.Report)
}

// Object jobs whose target key the library could not use are refused
// before anything is touched (a rewrap changes objects in place).
func TestObjectJobsRefuseForeignCustodians(t *testing.T) {
	for _, c := range []struct {
		format, src, dst, wrap, want string
	}{
		{"s3ec", "awskms:alias/a?region=eu-west-1", env.KEK("target", "kek-aes"), "", "use an awskms: reference"},
		{"oss-cse", env.KEK("source", "kek-rsa"), "awskms:alias/a?region=eu-west-1", "", "pkcs11:) or Alibaba Cloud KMS"},
		{"oss-cse", env.KEK("source", "kek-rsa"), env.KEK("target", "kek-rsa"), "rsa-oaep-sha1", "OSS reads RSA/NONE/PKCS1Padding only"},
		{"s3ec", "awskms:alias/a?region=eu-west-1", "awskms:alias/b?region=eu-west-1", "", ""},
	} {
		j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "r", Ledger: t.TempDir(),
			Source: pipeline.Side{Data: "s3://b/p", KEK: c.src, Format: c.format}, Target: pipeline.Side{KEK: c.dst, Wrap: c.wrap}}
		if c.format == "oss-cse" {
			j.Source.Data = "oss://b/p"
		}
		j.Defaults()
		err := j.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s %s -> %s (%s): %v, want %q", c.format, c.src, c.dst, c.wrap, err, c.want)
		}
	}
}
