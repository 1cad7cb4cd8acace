package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/aws/amazon-s3-encryption-client-go/v3/client"
	"github.com/aws/amazon-s3-encryption-client-go/v3/materials"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"rekey/pipeline"
	_ "rekey/providers/awskms"
	"rekey/providers/awskms/localkms"
	"rekey/providers/internal/testserver"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// Issue 13, format 3: objects written by the S3 Encryption Client (Go v3,
// kms+context, AES-GCM) to versitygw with KMS keys on local-kms; rekey
// rewraps them in place (metadata replaced by a server-side copy) and
// re-encrypts them into new objects; the client reads every one back with
// the new key, and fails with the old one.

type s3ecEnv struct {
	srv    *testserver.S3
	kms    *localkms.Server
	bucket string
	s3c    *s3.Client
}

func newS3ECEnv(t *testing.T) *s3ecEnv {
	kms := localkms.Start(t)
	srv := testserver.Versitygw(t)
	e := &s3ecEnv{srv: srv, kms: kms, bucket: "s3ec", s3c: srv.Client()}
	srv.CreateBucket(t, e.bucket)
	// rekey reaches S3 through the SDK's default chain; local-kms takes
	// any credentials (it checks no signatures), versitygw checks these.
	t.Setenv("AWS_ACCESS_KEY_ID", srv.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.Secret)
	t.Setenv("AWS_ENDPOINT_URL_S3", srv.Endpoint)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("REKEY_S3_PATH_STYLE", "1")
	return e
}

// client is the S3 Encryption Client with a KMS keyring on key.
func (e *s3ecEnv) client(t *testing.T, key string) *client.S3EncryptionClientV3 {
	t.Helper()
	kr := materials.NewKmsKeyring(e.kms.Client(), e.kms.KeyARN(key))
	cmm, err := materials.NewCryptographicMaterialsManager(kr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(e.s3c, cmm)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *s3ecEnv) get(c *client.S3EncryptionClientV3, key string) ([]byte, error) {
	out, err := c.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &e.bucket, Key: &key})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

func (e *s3ecEnv) run(t *testing.T, j *pipeline.Job) *schemas.Manifest {
	t.Helper()
	j.Defaults()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	if r := pipeline.Plan(context.Background(), j, true); r.Failed() {
		t.Fatalf("plan refused: %+v", r.Checks)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, j.Spec()) })
	return readJSON[schemas.Manifest](t, ledger.ManifestPath(j.Ledger, j.RunID))
}

func TestS3ECObjects(t *testing.T) {
	e := newS3ECEnv(t)
	ctx := context.Background()
	old := e.client(t, localkms.Key1)
	plain := map[string][]byte{}
	for i, name := range []string{"data/a.bin", "data/with space/b+c%.bin", "data/ünïcode/ключ.txt", "data/empty", "data/big.bin"} {
		pt := make([]byte, []int{5000, 1, 77, 0, 3 << 20}[i])
		_, _ = rand.Read(pt)
		if _, err := old.PutObject(ctx, &s3.PutObjectInput{Bucket: &e.bucket, Key: aws.String(name), Body: bytes.NewReader(pt)}); err != nil {
			t.Fatalf("S3EC put %s: %v", name, err)
		}
		plain[name] = pt
	}
	// An object that is not encrypted at all: skipped, as the job says.
	if _, err := e.s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: &e.bucket, Key: aws.String("data/plain.txt"), Body: strings.NewReader("hello")}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	src := "s3://" + e.bucket + "/data"

	t.Run("rewrap", func(t *testing.T) {
		j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "s3ec-rw",
			Source: pipeline.Side{Data: src, KEK: e.kms.KeyURI(localkms.Key1), Format: "s3ec", FormatOptions: map[string]string{"unencrypted": "skip"}},
			Target: pipeline.Side{KEK: e.kms.KeyURI(localkms.Key2)}, Ledger: filepath.Join(root, "ledger"), Workers: 2}
		m := e.run(t, j)
		if m.Totals.ObjectsMigrated != int64(len(plain)) || m.Totals.ObjectsSkipped != 1 || m.Totals.Failed != 0 {
			t.Fatalf("manifest %s %+v %+v", m.Status, m.Totals, m.Failures)
		}
		newc := e.client(t, localkms.Key2)
		for name, pt := range plain {
			got, err := e.get(newc, name)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%s: the S3 Encryption Client with the new key reads %d bytes, %v", name, len(got), err)
			}
			if _, err := e.get(old, name); err == nil {
				t.Fatalf("%s: the old key still opens it", name)
			}
		}
		rows, err := ledger.Read(ctx, j.Ledger, j.RunID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.Unit != schemas.UnitObject || r.ETagBefore == "" || r.Status == schemas.StatusMigrated && (r.ETagAfter == "" || r.Proof != schemas.ProofNone || r.NewDEKID == "") {
				t.Fatalf("ledger row %+v", r)
			}
		}
		// rekey verify decrypts every object with the new key; the
		// unencrypted one is skipped, as the job says.
		if rep := verifyObjects(t, j, j.Target.KEK); !rep.OK || rep.Totals.ObjectsMigrated != int64(len(plain)) || rep.Totals.ObjectsSkipped != 1 {
			t.Fatalf("verify: %+v %+v", rep.Totals, rep.Failures)
		}
		// --resume of the finished run replays its committed batches from
		// the ledger: the same totals, nothing done twice.
		again := *j
		again.Resume = true
		if m2 := e.run(t, &again); m2.Totals != m.Totals {
			t.Fatalf("resume: %+v, the run had %+v", m2.Totals, m.Totals)
		}
		// The same job again finds every object wrapped by the target.
		j.RunID = "s3ec-rw-again"
		m = e.run(t, j)
		if m.Totals.ObjectsSkipped != int64(len(plain))+1 || m.Totals.Failed != 0 {
			t.Fatalf("second rewrap: %+v", m.Totals)
		}
	})

	t.Run("bad-metadata", func(t *testing.T) {
		// Objects whose metadata rekey cannot use: each a failed row
		// naming the object and the reason, each left as it was.
		good := "data/a.bin"
		head, err := e.s3c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &e.bucket, Key: &good})
		if err != nil {
			t.Fatal(err)
		}
		with := func(edit func(m map[string]string)) map[string]string {
			m := map[string]string{}
			for k, v := range head.Metadata {
				m[k] = v
			}
			edit(m)
			return m
		}
		key, _ := base64.StdEncoding.DecodeString(head.Metadata["x-amz-key-v2"])
		bad := map[string]struct {
			meta map[string]string
			why  string
		}{
			"bad/unknown-wrap":  {with(func(m map[string]string) { m["x-amz-wrap-alg"] = "AES/KW" }), `wrap algorithm "AES/KW"`},
			"bad/unknown-cek":   {with(func(m map[string]string) { m["x-amz-cek-alg"] = "AES/XTS/NoPadding" }), `content algorithm "AES/XTS/NoPadding"`},
			"bad/truncated-key": {with(func(m map[string]string) { m["x-amz-key-v2"] = base64.StdEncoding.EncodeToString(key[:len(key)/2]) }), "unwrap its key"},
			"bad/instruction":   {with(func(m map[string]string) { delete(m, "x-amz-key-v2") }), "instruction file"},
			"bad/not-encrypted": {map[string]string{}, "no client-side encryption metadata"},
		}
		etags := map[string]string{}
		for name, b := range bad {
			out, err := e.s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: &e.bucket, Key: aws.String(name), Body: strings.NewReader("body of " + name), Metadata: b.meta})
			if err != nil {
				t.Fatal(err)
			}
			etags[name] = aws.ToString(out.ETag)
		}
		j := &pipeline.Job{Mode: schemas.ModeRewrap, RunID: "s3ec-bad",
			Source: pipeline.Side{Data: "s3://" + e.bucket + "/bad", KEK: e.kms.KeyURI(localkms.Key1), Format: "s3ec"},
			Target: pipeline.Side{KEK: e.kms.KeyURI(localkms.Key2)}, Ledger: filepath.Join(root, "ledger"), Workers: 2, MaxFailures: "10"}
		j.Defaults()
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.Build(s, j.Spec()) })
		m := readJSON[schemas.Manifest](t, ledger.ManifestPath(j.Ledger, j.RunID))
		if m.Totals.ObjectsFailed != int64(len(bad)) || m.Status == "succeeded" {
			t.Fatalf("manifest %s %+v", m.Status, m.Totals)
		}
		rows, err := ledger.Read(ctx, j.Ledger, j.RunID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			name := strings.TrimPrefix(r.Source, "s3://"+e.bucket+"/")
			if r.Status != schemas.StatusFailed || !strings.Contains(r.Error, r.Source) || !strings.Contains(r.Error, bad[name].why) {
				t.Errorf("%s: %s %q, want failed naming it and %q", name, r.Status, r.Error, bad[name].why)
			}
		}
		for name := range bad {
			h, err := e.s3c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &e.bucket, Key: aws.String(name)})
			if err != nil || aws.ToString(h.ETag) != etags[name] || len(h.Metadata) != len(bad[name].meta) {
				t.Fatalf("%s changed: %v", name, err)
			}
		}
	})

	t.Run("reencrypt", func(t *testing.T) {
		// One object's body changed behind the library's back: its tag
		// fails, it is a failed row, and nothing is written for it.
		bad := "data/a.bin"
		head, err := e.s3c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &e.bucket, Key: &bad})
		if err != nil {
			t.Fatal(err)
		}
		raw, err := e.s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &e.bucket, Key: &bad})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(raw.Body)
		raw.Body.Close()
		body[10] ^= 1
		if _, err := e.s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: &e.bucket, Key: &bad, Body: bytes.NewReader(body), Metadata: head.Metadata}); err != nil {
			t.Fatal(err)
		}
		j := &pipeline.Job{Mode: schemas.ModeReencrypt, RunID: "s3ec-re",
			Source: pipeline.Side{Data: src, KEK: e.kms.KeyURI(localkms.Key2), Format: "s3ec", FormatOptions: map[string]string{"unencrypted": "skip"}},
			Target: pipeline.Side{Data: "s3://" + e.bucket + "/re", KEK: e.kms.KeyURI(localkms.Key1)}, Ledger: filepath.Join(root, "ledger"), Workers: 2, MaxFailures: "1"}
		m := e.run(t, j)
		if m.Totals.ObjectsMigrated != int64(len(plain))-1 || m.Totals.ObjectsFailed != 1 {
			t.Fatalf("manifest %s %+v %+v", m.Status, m.Totals, m.Failures)
		}
		if !strings.Contains(m.Failures[0].Error, "a.bin") || !strings.Contains(m.Failures[0].Error, "tag mismatch") {
			t.Fatalf("failure %+v", m.Failures[0])
		}
		for name, pt := range plain {
			target := "re/" + strings.TrimPrefix(name, "data/")
			got, err := e.get(old, target)
			if name == bad {
				if err == nil {
					t.Fatalf("%s was written although its body failed", target)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%s: the S3 Encryption Client reads %d bytes, %v", target, len(got), err)
			}
		}
		// --incremental keeps the objects made from unchanged sources.
		j.RunID, j.Incremental = "s3ec-re-inc", true
		m = e.run(t, j)
		if m.Totals.ObjectsSkipped != int64(len(plain)) || m.Totals.ObjectsFailed != 1 || m.Totals.ObjectsMigrated != 0 {
			t.Fatalf("incremental: %+v", m.Totals)
		}
	})
}
