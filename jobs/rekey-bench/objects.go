package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/amazon-s3-encryption-client-go/v3/client"
	"github.com/aws/amazon-s3-encryption-client-go/v3/materials"
	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"gopkg.in/yaml.v3"

	"rekey/providers/awskms/localkms"
	"rekey/schemas"
)

// The objects section: --objects-count objects of --objects-kib KiB,
// written by the S3 Encryption Client (Go v3, kms+context, AES-GCM) with
// local-kms key 1 into an in-process gofakes3 (s3mem backend) on
// 127.0.0.1, served by this process behind a handler that counts the body
// bytes of every GET on an object key. Per repetition:
//
//   - rekey rewrap (source.format s3ec, no target.data): each object's
//     wrapped key moves to the other local-kms key (key 1 -> key 2 in the
//     1st, 3rd, ... repetition, back in the others), its metadata replaced
//     by a server-side CopyObject. objects/s; the section fails unless the
//     source objects' GET body bytes served during the run are 0;
//   - rekey reencrypt of the same objects (wrapped by the key of the last
//     rewrap) into another prefix, under the other key: MB/s of plaintext;
//   - its peer, the storage copy rate of the same server in the same run:
//     `rekey-bench s3-copy` (a child process, like rekey) GETs every object
//     body and PUTs it under a third prefix with as many goroutines as
//     rekey's default --workers (the CPUs), and, for information, with 1.
//
// The order of the runs rotates per repetition. The bench reads back a
// sample of the objects each rekey run wrote, with the S3 Encryption
// Client, outside the counted window.

const (
	objBucket   = "bench"
	objSrc      = "src/"
	objRe       = "re/"
	objCopy     = "copy/"
	objVerifyN  = 3 // objects read back after each rekey run
	fakeS3Creds = "fake"
)

func keyObjRewrap() string        { return "objects/rekey/rewrap" }
func keyObjReencrypt() string     { return "objects/rekey/reencrypt" }
func keyObjCopy(g int) string     { return fmt.Sprintf("objects/copy/g%d", g) }
func objName(i int) string        { return fmt.Sprintf("obj-%05d.bin", i) }
func objURI(prefix string) string { return "s3://" + objBucket + "/" + strings.TrimSuffix(prefix, "/") }

// s3Counts are the requests the fake server answered.
type s3Counts struct {
	Gets         int64 `json:"get_object"`
	GetBodyBytes int64 `json:"get_body_bytes"` // every GET on an object key
	SrcBodyBytes int64 `json:"source_get_body_bytes"`
	Heads        int64 `json:"head"`
	Puts         int64 `json:"put"`
	PutBytes     int64 `json:"put_bytes"`
	Copies       int64 `json:"copy"`
	Lists        int64 `json:"list"`
	Posts        int64 `json:"post"`
	Deletes      int64 `json:"delete"`
}

func (a s3Counts) minus(b s3Counts) s3Counts {
	return s3Counts{a.Gets - b.Gets, a.GetBodyBytes - b.GetBodyBytes, a.SrcBodyBytes - b.SrcBodyBytes, a.Heads - b.Heads, a.Puts - b.Puts,
		a.PutBytes - b.PutBytes, a.Copies - b.Copies, a.Lists - b.Lists, a.Posts - b.Posts, a.Deletes - b.Deletes}
}

func (a s3Counts) String() string {
	return fmt.Sprintf("S3: %d HEAD, %d GET object (%d body bytes, %d of source objects), %d PUT (%d bytes), %d CopyObject, %d POST, %d DELETE, %d list",
		a.Heads, a.Gets, a.GetBodyBytes, a.SrcBodyBytes, a.Puts, a.PutBytes, a.Copies, a.Posts, a.Deletes, a.Lists)
}

// fakeS3 is gofakes3 on 127.0.0.1 with its requests counted.
type fakeS3 struct {
	be       *s3mem.Backend
	h        http.Handler
	srv      *http.Server
	Endpoint string
	src      map[string]bool // the source objects' keys (fixed after setup)
	mu       sync.Mutex
	n        s3Counts
}

func startFakeS3() (*fakeS3, error) {
	f := &fakeS3{be: s3mem.New(), src: map[string]bool{}}
	if err := f.be.CreateBucket(objBucket); err != nil {
		return nil, err
	}
	f.h = gofakes3.New(f.be, gofakes3.WithLogger(gofakes3.DiscardLog())).Server()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.Endpoint = "http://" + ln.Addr().String()
	f.srv = &http.Server{Handler: f, ReadHeaderTimeout: time.Minute}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *fakeS3) close() { _ = f.srv.Close() }

func (f *fakeS3) counts() s3Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// countingWriter counts the body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// ServeHTTP counts the request (path-style: /bucket/key) and serves it.
func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	var add func(c *s3Counts)
	switch r.Method {
	case http.MethodGet:
		if key == "" || q.Has("uploadId") || q.Has("tagging") || q.Has("acl") || q.Has("uploads") {
			add = func(c *s3Counts) { c.Lists++ }
			break
		}
		cw := &countingWriter{ResponseWriter: w}
		f.h.ServeHTTP(cw, r)
		f.mu.Lock()
		f.n.Gets++
		f.n.GetBodyBytes += cw.n
		if f.src[key] {
			f.n.SrcBodyBytes += cw.n
		}
		f.mu.Unlock()
		return
	case http.MethodHead:
		add = func(c *s3Counts) { c.Heads++ }
	case http.MethodPut:
		if r.Header.Get("x-amz-copy-source") != "" {
			add = func(c *s3Counts) { c.Copies++ }
		} else {
			n := r.ContentLength
			add = func(c *s3Counts) { c.Puts++; c.PutBytes += max(n, 0) }
		}
	case http.MethodPost:
		add = func(c *s3Counts) { c.Posts++ }
	case http.MethodDelete:
		add = func(c *s3Counts) { c.Deletes++ }
	}
	if add != nil {
		f.mu.Lock()
		add(&f.n)
		f.mu.Unlock()
	}
	f.h.ServeHTTP(w, r)
}

// removePrefix deletes the objects named names under prefix, in the
// backend (no request).
func (f *fakeS3) removePrefix(prefix string, names []string) {
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = prefix + n
	}
	_, _ = f.be.DeleteMulti(objBucket, keys...)
}

// allUnder lists every key under prefix, in the backend.
func (f *fakeS3) allUnder(prefix string) ([]string, error) {
	res, err := f.be.ListBucket(objBucket, &gofakes3.Prefix{Prefix: prefix, HasPrefix: true}, gofakes3.ListBucketPage{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, o := range res.Contents {
		out = append(out, o.Key)
	}
	return out, nil
}

func (f *fakeS3) client() *s3.Client {
	return s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(f.Endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(fakeS3Creds, fakeS3Creds, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired, ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired})
}

// objBench is the section's fixture.
type objBench struct {
	s3    *fakeS3
	kms   kmsServer
	stop  func() // local-kms, when the section started its own
	names []string
	sums  map[string][32]byte // plaintext SHA-256 per name
	count int
	size  int    // plaintext bytes per object
	cur   string // the local-kms key (Key1, Key2) wrapping the source objects
}

func (o *objBench) close() {
	o.s3.close()
	if o.stop != nil {
		o.stop()
	}
}

// keyURI and keyARN name a local-kms key (localkms.Key1, Key2).
func (o *objBench) keyURI(k string) string {
	if k == localkms.Key1 {
		return o.kms.Src
	}
	return o.kms.Dst["reencrypt"] // the plain key-2 reference (no profile)
}

func (o *objBench) keyARN(k string) string {
	if k == localkms.Key1 {
		return o.kms.SrcARN
	}
	return o.kms.DstARN
}

func otherKey(k string) string {
	if k == localkms.Key1 {
		return localkms.Key2
	}
	return localkms.Key1
}

// env is the environment of the section's children: local-kms's (fake
// credentials, no real AWS settings) and the fake S3's endpoint.
func (o *objBench) env() []string {
	set := map[string]string{"AWS_ENDPOINT_URL_S3": o.s3.Endpoint, "AWS_REGION": "us-east-1", "REKEY_S3_PATH_STYLE": "1"}
	var out []string
	for _, e := range o.kms.Env {
		k, _, _ := strings.Cut(e, "=")
		if _, ok := set[k]; !ok {
			out = append(out, e)
		}
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// encClient is the S3 Encryption Client with a KMS keyring on key k.
func (o *objBench) encClient(k string) (*client.S3EncryptionClientV3, error) {
	kc := kms.New(kms.Options{Region: o.kms.Region, BaseEndpoint: aws.String(o.kms.Endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(localkms.AccessKeyID, localkms.SecretAccessKey, "")})
	cmm, err := materials.NewCryptographicMaterialsManager(materials.NewKmsKeyring(kc, o.keyARN(k)))
	if err != nil {
		return nil, err
	}
	return client.New(o.s3.client(), cmm)
}

// setupObjects starts the fake S3 (and local-kms, unless the KMS section
// runs one: ks) and writes the source objects with key 1.
func setupObjects(ctx context.Context, c *config, ks *kmsServer) (*objBench, error) {
	o := &objBench{count: c.ObjectsCount, size: c.ObjectsKiB << 10, sums: map[string][32]byte{}, cur: localkms.Key1}
	if ks != nil {
		o.kms = *ks
	} else {
		dir := filepath.Join(c.Dir, "localkms-objects")
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
		srv, err := localkms.Run(ctx, dir)
		if err != nil {
			return nil, err
		}
		o.kms, o.stop = kmsServerOf(srv), func() { srv.Close() }
	}
	var err error
	if o.s3, err = startFakeS3(); err != nil {
		if o.stop != nil {
			o.stop()
		}
		return nil, err
	}
	for i := 0; i < o.count; i++ {
		o.names = append(o.names, objName(i))
		o.s3.src[objSrc+objName(i)] = true
	}
	start := time.Now()
	enc, err := o.encClient(localkms.Key1)
	if err != nil {
		o.close()
		return nil, err
	}
	var mu sync.Mutex
	err = forEach(o.count, 4, func(i int) error {
		pt := make([]byte, o.size)
		if _, err := rand.Read(pt); err != nil {
			return err
		}
		sum := sha256.Sum256(pt)
		key := objSrc + o.names[i]
		if _, err := enc.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(objBucket), Key: &key, Body: bytes.NewReader(pt)}); err != nil {
			return fmt.Errorf("S3 Encryption Client put %s: %w", key, err)
		}
		mu.Lock()
		o.sums[o.names[i]] = sum
		mu.Unlock()
		return nil
	})
	if err != nil {
		o.close()
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "  %d objects of %d KiB written by the S3 Encryption Client v3 (local-kms %s) to gofakes3 at %s in %s\n",
		o.count, c.ObjectsKiB, localkms.Key1, o.s3.Endpoint, time.Since(start).Round(time.Millisecond))
	return o, nil
}

// readBack checks a sample of the objects under prefix with the S3
// Encryption Client on key k (outside any counted window).
func (o *objBench) readBack(ctx context.Context, prefix, k string) error {
	enc, err := o.encClient(k)
	if err != nil {
		return err
	}
	for _, i := range []int{0, o.count / 2, o.count - 1}[:min(objVerifyN, o.count)] {
		key := prefix + o.names[i]
		out, err := enc.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(objBucket), Key: &key})
		if err != nil {
			return fmt.Errorf("read back %s with %s: %w", key, k, err)
		}
		b, err := io.ReadAll(out.Body)
		out.Body.Close()
		if err != nil {
			return fmt.Errorf("read back %s: %w", key, err)
		}
		if sha256.Sum256(b) != o.sums[o.names[i]] {
			return fmt.Errorf("read back %s with %s: the plaintext differs (%d bytes)", key, k, len(b))
		}
	}
	return nil
}

// runObjectJob runs `rekey run --job` on a job file of doc.
func (o *objBench) runObjectJob(ctx context.Context, bin string, doc map[string]any, scratch, logs, runID string) (childResult, *schemas.Manifest, error) {
	out := filepath.Join(scratch, runID)
	if err := os.RemoveAll(out); err != nil {
		return childResult{}, nil, err
	}
	defer os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return childResult{}, nil, err
	}
	doc["version"], doc["run_id"], doc["ledger"] = 1, runID, filepath.Join(out, "ledger")
	b, err := yaml.Marshal(doc)
	if err != nil {
		return childResult{}, nil, err
	}
	job := filepath.Join(out, "job.yaml")
	if err := os.WriteFile(job, b, 0o644); err != nil {
		return childResult{}, nil, err
	}
	log := filepath.Join(logs, runID+".log")
	res, err := runChildEnv(ctx, bin, []string{"run", "--job", job, "--runner", "direct", "--progress", "-1s"}, o.env(), log)
	if err != nil {
		return res, nil, err
	}
	m, err := readManifestFile(filepath.Join(out, "ledger", "run_id="+runID, "_manifest.json"))
	if err != nil {
		return res, nil, fmt.Errorf("run %s: %w", runID, err)
	}
	if m.Totals.Failed > 0 || m.Totals.ObjectsMigrated != int64(o.count) {
		return res, m, fmt.Errorf("run %s: %d objects migrated of %d, %d failed (log: %s)", runID, m.Totals.ObjectsMigrated, o.count, m.Totals.Failed, log)
	}
	if res.Pipeline <= 0 {
		return res, m, fmt.Errorf("run %s: no elapsed time in its output (log: %s)", runID, log)
	}
	return res, m, nil
}

// s3CopyResult is what `rekey-bench s3-copy` prints.
type s3CopyResult struct {
	Objects int     `json:"objects"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// s3CopyMain runs `rekey-bench s3-copy` (internal): every object under
// --src is read (GET, whole body) and written under --dst (PUT), by g
// goroutines, through one aws-sdk-go-v2 S3 client configured as rekey's
// (path style, checksums only when required, no retries).
func s3CopyMain(args []string) error {
	fs := flag.NewFlagSet("rekey-bench s3-copy", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "S3 endpoint")
	bucket := fs.String("bucket", objBucket, "bucket")
	src := fs.String("src", objSrc, "source prefix")
	dst := fs.String("dst", objCopy, "target prefix")
	g := fs.Int("goroutines", 1, "goroutines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) { t.MaxIdleConnsPerHost = max(64, *g) })
	cli := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: endpoint, UsePathStyle: true, HTTPClient: hc,
		Credentials:                credentials.NewStaticCredentialsProvider(fakeS3Creds, fakeS3Creds, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired, ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		Retryer: aws.NopRetryer{}})
	var keys []string
	p := s3.NewListObjectsV2Paginator(cli, &s3.ListObjectsV2Input{Bucket: bucket, Prefix: src})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	if len(keys) == 0 {
		return fmt.Errorf("no objects under s3://%s/%s", *bucket, *src)
	}
	var mu sync.Mutex
	var total int64
	bufs := make(chan *bytes.Buffer, *g)
	for i := 0; i < *g; i++ {
		bufs <- &bytes.Buffer{}
	}
	start := time.Now()
	err := forEach(len(keys), *g, func(i int) error {
		buf := <-bufs
		defer func() { bufs <- buf }()
		buf.Reset()
		out, err := cli.GetObject(ctx, &s3.GetObjectInput{Bucket: bucket, Key: &keys[i]})
		if err != nil {
			return fmt.Errorf("GET %s: %w", keys[i], err)
		}
		_, err = buf.ReadFrom(out.Body)
		out.Body.Close()
		if err != nil {
			return fmt.Errorf("GET %s: %w", keys[i], err)
		}
		to := *dst + strings.TrimPrefix(keys[i], *src)
		n := int64(buf.Len())
		if _, err := cli.PutObject(ctx, &s3.PutObjectInput{Bucket: bucket, Key: &to, Body: bytes.NewReader(buf.Bytes()), ContentLength: aws.Int64(n)}); err != nil {
			return fmt.Errorf("PUT %s: %w", to, err)
		}
		mu.Lock()
		total += n
		mu.Unlock()
		return nil
	})
	el := time.Since(start).Seconds()
	if err != nil {
		return err
	}
	b, _ := json.Marshal(s3CopyResult{Objects: len(keys), Bytes: total, Seconds: el})
	fmt.Println(string(b))
	return nil
}

// objectsRuns is one repetition of the section.
func objectsRuns(ctx context.Context, c *config, t *table, o *objBench, rep int, scratch, logs string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	N := c.Workers
	payload := float64(o.count) * float64(o.size)
	n := float64(o.count)
	rewrap := func() error {
		from, to := o.cur, otherKey(o.cur)
		id := fmt.Sprintf("objects-rewrap-r%d", rep)
		doc := map[string]any{"mode": schemas.ModeRewrap,
			"source": map[string]any{"data": objURI(objSrc), "kek": o.keyURI(from), "format": "s3ec"},
			"target": map[string]any{"kek": o.keyURI(to)}}
		before := o.s3.counts()
		cr, m, err := o.runObjectJob(ctx, c.Rekey, doc, scratch, logs, id)
		during := o.s3.counts().minus(before)
		if err != nil {
			return err
		}
		o.cur = to
		if during.SrcBodyBytes != 0 {
			return fmt.Errorf("run %s: a rewrap of objects read %d body bytes of the source objects (want 0: metadata is replaced by a server-side copy; %s; log: %s)",
				id, during.SrcBodyBytes, during, filepath.Join(logs, id+".log"))
		}
		if err := o.readBack(ctx, objSrc, to); err != nil {
			return fmt.Errorf("after run %s: %w", id, err)
		}
		row := &Row{Section: "objects", What: "rekey rewrap s3ec, key-1 <-> key-2 (HEAD + CopyObject) [default workers]",
			Cell: o.size, Workers: N, Runner: "direct", Unit: "objects/s", DEKs: m.Totals.ObjectsMigrated, HSMOps: 3 * m.Totals.ObjectsMigrated,
			HSMOpsNote: "estimate: 3 KMS requests per object (Decrypt, Encrypt, verify Decrypt)", DefaultWorkers: true}
		t.addRun(keyObjRewrap(), row, n/cr.Pipeline.Seconds(), n/cr.Pipeline.Seconds(), cr)
		r := t.byKey[keyObjRewrap()]
		r.SourceGETBytes = append(r.SourceGETBytes, during.SrcBodyBytes)
		r.Note = fmt.Sprintf("source GET body bytes %v (asserted 0); last run: %s", r.SourceGETBytes, during)
		return nil
	}
	reencrypt := func() error {
		from, to := o.cur, otherKey(o.cur)
		id := fmt.Sprintf("objects-reencrypt-r%d", rep)
		o.s3.removePrefix(objRe, o.names)
		doc := map[string]any{"mode": schemas.ModeReencrypt,
			"source": map[string]any{"data": objURI(objSrc), "kek": o.keyURI(from), "format": "s3ec"},
			"target": map[string]any{"data": objURI(objRe), "kek": o.keyURI(to)}}
		before := o.s3.counts()
		cr, m, err := o.runObjectJob(ctx, c.Rekey, doc, scratch, logs, id)
		during := o.s3.counts().minus(before)
		if err != nil {
			return err
		}
		if err := o.readBack(ctx, objRe, to); err != nil {
			return fmt.Errorf("after run %s: %w", id, err)
		}
		if keys, _ := o.s3.allUnder(objRe); len(keys) > 0 {
			o.s3.removePrefix("", keys)
		}
		secs := cr.Pipeline.Seconds()
		row := &Row{Section: "objects", What: "rekey reencrypt s3ec into another prefix (stream, new key) [default workers]",
			Cell: o.size, Workers: N, Runner: "direct", Unit: "MB/s", DEKs: m.Totals.ObjectsMigrated, HSMOps: 4 * m.Totals.ObjectsMigrated,
			HSMOpsNote: "estimate: 4 KMS requests per object (Decrypt, GenerateDataKey, Encrypt, verify Decrypt)", DefaultWorkers: true,
			LimitKey: keyObjCopy(N)}
		t.addRun(keyObjReencrypt(), row, payload/secs/1e6, n/secs, cr)
		t.byKey[keyObjReencrypt()].Note = "last run: " + during.String()
		return nil
	}
	copyRun := func(g int) func() error {
		return func() error {
			args := []string{"s3-copy", "--endpoint", o.s3.Endpoint, "--bucket", objBucket, "--src", objSrc, "--dst", objCopy, "--goroutines", strconv.Itoa(g)}
			before := o.s3.counts()
			cr, err := runChild(ctx, self, args, filepath.Join(logs, fmt.Sprintf("objects-copy-g%d-r%d.log", g, rep)))
			during := o.s3.counts().minus(before)
			if keys, _ := o.s3.allUnder(objCopy); len(keys) > 0 {
				o.s3.removePrefix("", keys)
			}
			if err != nil {
				return err
			}
			var res s3CopyResult
			if err := json.Unmarshal([]byte(cr.Stdout), &res); err != nil || res.Objects != o.count {
				return fmt.Errorf("s3-copy g%d: %q: %v", g, cr.Stdout, err)
			}
			what := "storage copy: GET body + PUT, no crypto (peer)"
			if g != N {
				what = "storage copy: GET body + PUT, no crypto (info)"
			}
			t.addRun(keyObjCopy(g), &Row{Section: "objects", What: what, Cell: o.size, Workers: g, Unit: "MB/s", DEKs: 0},
				payload/res.Seconds/1e6, n/res.Seconds, cr)
			t.byKey[keyObjCopy(g)].Note = "last run: " + during.String()
			return nil
		}
	}
	order := []func() error{rewrap, reencrypt, copyRun(N)}
	if N != 1 {
		order = append(order, copyRun(1))
	}
	for i := 0; i < rep%len(order); i++ {
		order = append(order[1:], order[0])
	}
	for _, f := range order {
		if err := f(); err != nil {
			return fmt.Errorf("objects section: %w", err)
		}
	}
	return nil
}

// objectsSummary states the section's figures: the rewrap's objects/s and
// its source GET bytes, and the reencrypt against the storage copy.
func objectsSummary(t *table, c *config) []string {
	var out []string
	if r := t.byKey[keyObjRewrap()]; r != nil && r.Median > 0 {
		out = append(out, fmt.Sprintf("rewrap: %s objects/s (%d objects of %s, direct, default workers); source object GET body bytes per run %v: the bodies were not read (asserted)",
			fnum(r.Median), r.DEKs, cellName(r.Cell), r.SourceGETBytes))
	}
	if r := t.byKey[keyObjReencrypt()]; r != nil && r.Median > 0 {
		s := fmt.Sprintf("reencrypt: %s MB/s of plaintext (%s objects/s)", fnum(r.Median), fnum(r.RecordsPerS))
		if l := t.byKey[r.LimitKey]; l != nil {
			s += fmt.Sprintf(" = %.2fx the storage copy of the same server at %d goroutines (%s MB/s; pairs %s)", r.VsLimit, l.Workers, fnum(l.Median), pairs(r.VsLimitPairs))
		}
		if one := t.byKey[keyObjCopy(1)]; one != nil && one.Median > 0 && c.Workers != 1 {
			s += fmt.Sprintf("; %.2fx the copy at 1 goroutine (%s MB/s)", r.Median/one.Median, fnum(one.Median))
		}
		if r.CPUSeconds > 0 {
			s += fmt.Sprintf("; rekey CPU %.2f s per run for %.0f MB", r.CPUSeconds, float64(r.DEKs)*float64(r.Cell)/1e6)
		}
		out = append(out, s)
	}
	return out
}

func objectsNotes(c *config) []string {
	return []string{
		fmt.Sprintf("objects rows: %d objects of %d KiB written once by the S3 Encryption Client Go v3 (kms+context, AES-GCM, local-kms key 1) into gofakes3 (s3mem, in this process on 127.0.0.1; it ignores signatures), reached by rekey through AWS_ENDPOINT_URL_S3 and REKEY_S3_PATH_STYLE=1 and by local-kms through awskms: references. Each repetition rewraps them in place to the other key (key 1 -> 2, then back: the source objects are always wrapped by the last rewrap's target) and reencrypts them from that key into the prefix re/ under the other key; each rekey run is `rekey run --job --runner direct` with default workers, and a sample of what it wrote is read back with the S3 Encryption Client afterwards.", c.ObjectsCount, c.ObjectsKiB),
		"objects: the fake server counts the body bytes of every GET on an object key; a rewrap run that served any body bytes of the source objects fails the section. The storage copy peer (`rekey-bench s3-copy`, a child process) GETs every source body and PUTs it under copy/ with an aws-sdk-go-v2 S3 client configured as rekey's (path style, checksums when required), with rekey's default --workers (the CPUs) goroutines, and with 1 for information; MB/s of both is plaintext bytes (count x size; a stored body is 16 bytes longer) over rekey's pipeline time or the copy loop's own time. 'vs limit' of the reencrypt row is rekey / copy at the CPUs' goroutines.",
	}
}
