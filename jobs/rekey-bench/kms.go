package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"rekey/providers/awskms"
	"rekey/providers/awskms/localkms"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
)

// The KMS section (issue 12): a DEK table wrapped by one AWS KMS key is
// rewrapped into another by `rekey run --mode rewrap`, through local-kms
// (providers/awskms/localkms: the emulator in a private network namespace
// behind a proxy on 127.0.0.1), on both of rekey's paths:
//
//   - reencrypt: both keys reached the same way, so keys.CanRewrap holds and
//     rekey asks KMS to ReEncrypt (ledger path "custodian"), then verifies
//     the new wrap with a Decrypt by the target and the source KCV: 2
//     requests per DEK;
//   - client: the target reference names a profile (profile=localkms, the
//     same fake credentials) and the source does not, so CanRewrapTo is
//     false (providers/awskms: ReEncrypt needs the same profile) and rekey
//     unwraps with Decrypt, checks the KCV, wraps with Encrypt and verifies
//     with Decrypt (ledger path "rekey"): 3 requests per DEK.
//
// Each is set against a raw aws-sdk-go-v2 loop making the same requests
// per DEK (same encryption context, same KCV check and compare) with as
// many goroutines as rekey has workers, measured in the same run, one
// right after the other, the order rotating per repetition; and rekey runs
// at several --workers values, to see whether its default (the number of
// CPUs) is near the best.
//
// The raw loop runs as a child process too (`rekey-bench kms-raw`), like
// rekey: the proxy in front of local-kms lives in this process, and a loop
// sharing a process and Go scheduler with the proxy would reach it without
// the hand-offs between processes that rekey pays; as a child, its CPU
// time and peak RSS are also taken the same way as rekey's.

// kmsPath is one of rekey's two ways of moving a DEK between KMS keys.
type kmsPath struct {
	Tag      string // in row keys
	Ledger   string // the ledger's path column (schemas.Path*)
	Rekey    string // what of the rekey rows
	Raw      string // what of the raw loop rows
	Requests int64  // KMS requests per DEK
}

var kmsPaths = []kmsPath{
	{Tag: "reencrypt", Ledger: schemas.PathCustodian, Rekey: "rekey rewrap, ReEncrypt (path custodian)", Raw: "raw SDK loop: ReEncrypt+Decrypt", Requests: 2},
	{Tag: "client", Ledger: schemas.PathRekey, Rekey: "rekey rewrap, unwrap+wrap (path rekey)", Raw: "raw SDK loop: Decrypt+Encrypt+Decrypt", Requests: 3},
}

func keyKMSRekey(tag string, w int) string { return fmt.Sprintf("kms/rekey/%s/w%d", tag, w) }
func keyKMSRaw(tag string, w int) string   { return fmt.Sprintf("kms/raw/%s/w%d", tag, w) }

// kmsBench is the section's fixture: the server, the DEK table and the key
// references.
type kmsBench struct {
	kmsServer
	close func() // stops the server
	ds    *dataset
	rows  []schemas.DEKRow
}

// kmsServer is what the section needs of a running local-kms.
type kmsServer struct {
	Src string            // source key reference
	Dst map[string]string // target key reference per kmsPath.Tag
	kmsTarget
	// Env is the environment that reaches it (localkms's Environ of this
	// process's).
	Env []string
}

// kmsTarget is what the raw loop needs to reach the keys.
type kmsTarget struct {
	Endpoint, Region, SrcARN, DstARN string
}

func kmsServerOf(srv *localkms.Server) kmsServer {
	return kmsServer{Src: srv.KeyURI(localkms.Key1),
		Dst: map[string]string{
			"reencrypt": srv.KeyURI(localkms.Key2),
			"client":    srv.KeyURI(localkms.Key2) + "&profile=" + localkms.Profile,
		},
		kmsTarget: kmsTarget{Endpoint: srv.Endpoint(), Region: srv.Region(), SrcARN: srv.KeyARN(localkms.Key1), DstARN: srv.KeyARN(localkms.Key2)},
		Env:       srv.Environ(os.Environ())}
}

// kmsDefaultWorkers is how many KMS calls rekey keeps in flight when
// --workers is not given (transforms.Spec.KeyWorkers): the CPUs, or the
// awskms scheme's suggested concurrency when larger.
func kmsDefaultWorkers() int { return max(runtime.NumCPU(), awskms.DefaultConcurrency) }

// setupKMS starts local-kms (its keys are random per start: nothing of an
// earlier bench run is reused), points this process and the children it
// starts at it, checks that the two target references take the two paths,
// and writes the DEK table. With inChild, the server and its proxy run in
// a child process (`rekey-bench kms-serve`), so that a profile of this
// process shows the client alone.
func setupKMS(ctx context.Context, c *config, inChild bool) (*kmsBench, error) {
	dir := filepath.Join(c.Dir, "localkms")
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	k := &kmsBench{}
	if inChild {
		var err error
		if k.kmsServer, k.close, err = startKMSChild(ctx, dir, filepath.Join(c.Dir, "logs", "kms-serve.log")); err != nil {
			return nil, err
		}
	} else {
		srv, err := localkms.Run(ctx, dir)
		if err != nil {
			return nil, err
		}
		k.kmsServer, k.close = kmsServerOf(srv), func() { srv.Close() }
	}
	os.Clearenv()
	for _, e := range k.Env {
		name, v, _ := strings.Cut(e, "=")
		os.Setenv(name, v)
	}
	if err := k.prepare(ctx, c); err != nil {
		k.close()
		return nil, err
	}
	return k, nil
}

// kmsServeMain runs `rekey-bench kms-serve DIR` (internal): a local-kms
// with its files in DIR, described as one JSON line (kmsServer) on stdout,
// until stdin is closed.
func kmsServeMain(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: rekey-bench kms-serve DIR")
	}
	srv, err := localkms.Run(context.Background(), args[0])
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := json.NewEncoder(os.Stdout).Encode(kmsServerOf(srv)); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent ends (or dies)
	return nil
}

// startKMSChild starts `rekey-bench kms-serve` and returns what it serves
// and how to stop it.
func startKMSChild(ctx context.Context, dir, logPath string) (kmsServer, func(), error) {
	var ks kmsServer
	self, err := os.Executable()
	if err != nil {
		return ks, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return ks, nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return ks, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(self, "kms-serve", dir)
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return ks, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return ks, nil, err
	}
	if err := cmd.Start(); err != nil {
		return ks, nil, err
	}
	stop := func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	if err := json.NewDecoder(stdout).Decode(&ks); err != nil {
		stop()
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte(localkms.ErrNoBinary.Error())) {
			err = localkms.ErrNoBinary
		} else if bytes.Contains(b, []byte(localkms.ErrNoNamespace.Error())) {
			err = localkms.ErrNoNamespace
		}
		return ks, nil, fmt.Errorf("kms-serve: %w (log: %s)", err, logPath)
	}
	return ks, stop, nil
}

func (k *kmsBench) prepare(ctx context.Context, c *config) error {
	const genWorkers = 8 // requests in flight while writing the table
	src, err := keys.Open(ctx, k.Src, keys.Options{Sessions: genWorkers})
	if err != nil {
		return fmt.Errorf("local-kms source key: %w", err)
	}
	for _, p := range kmsPaths {
		dst, err := keys.Open(ctx, k.Dst[p.Tag], keys.Options{})
		if err != nil {
			return fmt.Errorf("local-kms target key: %w", err)
		}
		if got, want := keys.CanRewrap(src, dst, awskms.Mechanism), p.Ledger == schemas.PathCustodian; got != want {
			return fmt.Errorf("local-kms: keys.CanRewrap(%s, %s) = %v, want %v: the %s rows would not measure their path", k.Src, k.Dst[p.Tag], got, want, p.Tag)
		}
	}
	k.ds = newDataset(c.Dir, fmt.Sprintf("kms-deks-%d", c.KMSDEKs), 0, 0, 0, c.KMSDEKs)
	if err := generateKMSTable(ctx, src, k.ds, genWorkers); err != nil {
		return err
	}
	k.rows, err = transforms.ReadDEKTable(ctx, k.ds.DEKs)
	if err != nil {
		return err
	}
	if len(k.rows) != c.KMSDEKs {
		return fmt.Errorf("KMS DEK table: %d rows, want %d", len(k.rows), c.KMSDEKs)
	}
	return nil
}

// generateKMSTable writes ds's DEK table as rekey gen would (one file,
// dek_ids from transforms.GenDEKID, each DEK bound to its dek_id, KCV):
// fresh random DEKs wrapped by src, an awskms: KEK, through providers/keys.
func generateKMSTable(ctx context.Context, src keys.KEK, ds *dataset, workers int) error {
	if err := os.RemoveAll(ds.Dir); err != nil {
		return err
	}
	if err := os.MkdirAll(ds.DEKs, 0o755); err != nil {
		return err
	}
	start := time.Now()
	rows := make([]schemas.DEKRow, ds.NumDEKs)
	created := time.Now().UTC()
	err := forEach(len(rows), workers, func(i int) error {
		raw := make([]byte, keys.DEKSize)
		defer clear(raw)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		dek, err := keys.NewDEK(raw)
		if err != nil {
			return err
		}
		defer dek.Zero()
		id := transforms.GenDEKID(i)
		w, err := src.Wrap(ctx, keys.ByID(id), dek)
		if err != nil {
			return fmt.Errorf("wrap DEK %s with %s: %w", id, src.URI(), err)
		}
		rows[i] = schemas.DEKRow{DEKID: id, KEK: src.URI(), Wrap: src.Mechanism(), Wrapped: w, Created: created, KCV: schemas.KCV(raw, id)}
		return nil
	})
	if err != nil {
		return err
	}
	if err := writeParquet(filepath.Join(ds.DEKs, "part-00000.parquet"), rows); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  dataset %s: %d DEKs wrapped by local-kms in %s\n", ds.Name, len(rows), time.Since(start).Round(time.Millisecond))
	return nil
}

// kmsRawRate is the raw loop: DEKs per second when g goroutines take the
// table's DEKs in turn and make, per DEK, the KMS requests rekey makes on
// path p, with the same encryption context (rekey:dek_id) and the same
// checks (source KCV, target round trip), through one aws-sdk-go-v2 KMS
// client with one kept-alive connection per goroutine, as awskms opens
// its clients. Every DEK of the table is moved once, as by rekey.
func kmsRawRate(ctx context.Context, k kmsTarget, rows []schemas.DEKRow, p kmsPath, g int) (float64, error) {
	// The SDK's HTTP client with a kept-alive connection per goroutine, as
	// awskms opens its clients (which also cap connections at their
	// sessions: g here too, through the goroutines).
	hc := awshttp.NewBuildableClient().WithTimeout(awskms.Timeout).WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(64, g)
	})
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(k.Region), awsconfig.WithHTTPClient(hc))
	if err != nil {
		return 0, err
	}
	cli := kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(k.Endpoint) })
	src, dst := aws.String(k.SrcARN), aws.String(k.DstARN)
	alg := types.EncryptionAlgorithmSpecSymmetricDefault
	decrypt := func(key *string, blob []byte, ec map[string]string) ([]byte, error) {
		out, err := cli.Decrypt(ctx, &kms.DecryptInput{KeyId: key, CiphertextBlob: blob, EncryptionContext: ec, EncryptionAlgorithm: alg})
		if err != nil {
			return nil, err
		}
		return out.Plaintext, nil
	}
	start := time.Now()
	err = forEach(len(rows), g, func(i int) error {
		r := &rows[i]
		ec := map[string]string{awskms.ContextDEKID: r.DEKID}
		switch p.Ledger {
		case schemas.PathCustodian:
			out, err := cli.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: r.Wrapped,
				SourceKeyId: src, SourceEncryptionContext: ec, SourceEncryptionAlgorithm: alg,
				DestinationKeyId: dst, DestinationEncryptionContext: ec, DestinationEncryptionAlgorithm: alg})
			if err != nil {
				return fmt.Errorf("ReEncrypt %s: %w", r.DEKID, err)
			}
			back, err := decrypt(dst, out.CiphertextBlob, ec)
			if err != nil {
				return fmt.Errorf("Decrypt (verify) %s: %w", r.DEKID, err)
			}
			defer clear(back)
			return schemas.CheckKCV(back, r.DEKID, r.KCV)
		default:
			dek, err := decrypt(src, r.Wrapped, ec)
			if err != nil {
				return fmt.Errorf("Decrypt %s: %w", r.DEKID, err)
			}
			defer clear(dek)
			if err := schemas.CheckKCV(dek, r.DEKID, r.KCV); err != nil {
				return err
			}
			out, err := cli.Encrypt(ctx, &kms.EncryptInput{KeyId: dst, Plaintext: dek, EncryptionContext: ec, EncryptionAlgorithm: alg})
			if err != nil {
				return fmt.Errorf("Encrypt %s: %w", r.DEKID, err)
			}
			back, err := decrypt(dst, out.CiphertextBlob, ec)
			if err != nil {
				return fmt.Errorf("Decrypt (verify) %s: %w", r.DEKID, err)
			}
			defer clear(back)
			if !bytes.Equal(back, dek) {
				return fmt.Errorf("verify %s: round trip differs", r.DEKID)
			}
			return nil
		}
	})
	if err != nil {
		return 0, fmt.Errorf("raw KMS loop (%s, %d goroutines): %w", p.Tag, g, err)
	}
	return float64(len(rows)) / time.Since(start).Seconds(), nil
}

// kmsRawResult is what `rekey-bench kms-raw` prints.
type kmsRawResult struct {
	DEKsPerS float64 `json:"deks_per_s"`
	DEKs     int     `json:"deks"`
}

// kmsRawMain runs `rekey-bench kms-raw` (internal): the raw loop over a DEK
// table, as a process of its own; credentials from the environment.
func kmsRawMain(args []string) error {
	fs := flag.NewFlagSet("rekey-bench kms-raw", flag.ContinueOnError)
	var k kmsTarget
	fs.StringVar(&k.Endpoint, "endpoint", "", "KMS endpoint")
	fs.StringVar(&k.Region, "region", "", "region")
	fs.StringVar(&k.SrcARN, "source", "", "source key ARN")
	fs.StringVar(&k.DstARN, "target", "", "target key ARN")
	deks := fs.String("deks", "", "DEK table wrapped by the source key")
	tag := fs.String("path", "", "reencrypt or client")
	g := fs.Int("goroutines", 1, "goroutines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := kmsPathByTag(*tag)
	if err != nil {
		return err
	}
	ctx := context.Background()
	rows, err := transforms.ReadDEKTable(ctx, *deks)
	if err != nil {
		return err
	}
	r, err := kmsRawRate(ctx, k, rows, p, *g)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(kmsRawResult{DEKsPerS: r, DEKs: len(rows)})
	fmt.Println(string(b))
	return nil
}

func kmsPathByTag(tag string) (kmsPath, error) {
	for _, p := range kmsPaths {
		if p.Tag == tag {
			return p, nil
		}
	}
	return kmsPath{}, fmt.Errorf("KMS path %q: reencrypt or client", tag)
}

// kmsRuns is one repetition of the section: for each path and worker
// count, the raw loop and `rekey run`, one right after the other (raw
// first in the 1st, 3rd, ... repetition).
func kmsRuns(ctx context.Context, c *config, t *table, k *kmsBench, rep int, scratch, logs string) error {
	n := float64(len(k.rows))
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, p := range kmsPaths {
		for _, w := range c.KMSWorkers {
			raw := func() error {
				args := []string{"kms-raw", "--endpoint", k.Endpoint, "--region", k.Region, "--source", k.SrcARN, "--target", k.DstARN,
					"--deks", k.ds.DEKs, "--path", p.Tag, "--goroutines", strconv.Itoa(w)}
				cr, err := runChild(ctx, self, args, filepath.Join(logs, fmt.Sprintf("kms-raw-%s-w%d-r%d.log", p.Tag, w, rep)))
				if err != nil {
					return err
				}
				var res kmsRawResult
				if err := json.Unmarshal([]byte(cr.Stdout), &res); err != nil || res.DEKs != len(k.rows) {
					return fmt.Errorf("kms-raw %s w%d: %q: %v", p.Tag, w, cr.Stdout, err)
				}
				t.addRun(keyKMSRaw(p.Tag, w), &Row{Section: "kms", What: p.Raw, Workers: w, Unit: "DEKs/s", DEKs: int64(res.DEKs),
					HSMOpsPerDEK: p.Requests, group: "kms/raw/" + p.Tag}, res.DEKsPerS, 0, cr)
				return nil
			}
			// rk runs rekey (bin), or with --compare the other binary too.
			rk := func(bin string, base bool) func() error {
				return func() error {
					def := w == kmsDefaultWorkers()
					rr := rekeyRun{Mode: schemas.ModeRewrap, Runner: "direct", Workers: w, SourceKEK: k.Src, TargetKEK: k.Dst[p.Tag],
						Extra: []string{"--hsm-rate", strconv.FormatFloat(c.KMSRate, 'f', -1, 64)}, Path: p.Ledger}
					what := p.Rekey
					if def {
						rr.Workers = 0 // rekey's default
						what += " [default workers]"
					}
					id := fmt.Sprintf("kms-%s-w%d-r%d", p.Tag, w, rep)
					key, group, section := keyKMSRekey(p.Tag, w), "kms/rekey/"+p.Tag, "kms"
					if base {
						id += "-" + c.CompareLabel
						key, group, section, what = baseKey(key), baseKey(group), "base", what+" ("+c.CompareLabel+")"
					}
					cr, m, err := runRekey(ctx, bin, k.ds, rr, scratch, logs, id)
					if err != nil {
						return err
					}
					if m.Totals.DEKsMigrated != int64(len(k.rows)) {
						return fmt.Errorf("run %s: %d DEKs migrated, want %d", id, m.Totals.DEKsMigrated, len(k.rows))
					}
					row := &Row{Section: section, What: what, Workers: w, Runner: "direct", Unit: "DEKs/s", DEKs: m.Totals.DEKs,
						HSMOps: p.Requests * m.Totals.DEKs, HSMOpsNote: fmt.Sprintf("estimate: %d KMS requests per DEK", p.Requests),
						DefaultWorkers: def, group: group}
					t.addRun(key, row, n/cr.Pipeline.Seconds(), 0, cr)
					return nil
				}
			}
			// The order rotates per repetition, so no run always follows
			// the same one.
			order := []func() error{raw, rk(c.Rekey, false)}
			if c.Compare != "" {
				order = append(order, rk(c.Compare, true))
			}
			for i := 0; i < rep%len(order); i++ {
				order = append(order[1:], order[0])
			}
			for _, f := range order {
				if err := f(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// kmsWorkerList parses --kms-workers and adds rekey's default.
func kmsWorkerList(s string) ([]int, error) {
	ws, err := intList(s)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(ws, kmsDefaultWorkers()) {
		ws = append(ws, kmsDefaultWorkers())
	}
	slices.Sort(ws)
	return slices.Compact(ws), nil
}

// kmsSummary states the section's two goals for each path: rekey at its
// default workers >= 0.90x the raw loop at the same concurrency, and the
// default >= 0.80x the best worker count measured; with --compare, the
// same for the other binary.
func kmsSummary(t *table, c *config) []string {
	var out []string
	d := kmsDefaultWorkers()
	verdict := func(v, goal float64) string {
		if v >= goal {
			return "met"
		}
		return "missed"
	}
	for _, p := range kmsPaths {
		for _, base := range []bool{false, true} {
			key, name := keyKMSRekey(p.Tag, d), p.Rekey
			if base {
				key, name = baseKey(key), p.Rekey+" by "+c.CompareLabel
			}
			def := t.byKey[key]
			if def == nil || def.Median == 0 {
				continue
			}
			var per []string
			for _, r := range t.rows {
				if r.group == def.group && r.VsLimit > 0 {
					per = append(per, fmt.Sprintf("w%d %.2fx", r.Workers, r.VsLimit))
				}
			}
			s := fmt.Sprintf("%s: default (%d workers) %s DEKs/s = %.2fx the raw loop at %d goroutines (pairs %s; goal >= 0.90: %s)",
				name, d, fnum(def.Median), def.VsLimit, d, pairs(def.VsLimitPairs), verdict(def.VsLimit, 0.90))
			if best := t.byKey[def.BestKey]; best != nil {
				s += fmt.Sprintf("; best measured %d workers, %s DEKs/s = %.2fx the raw loop there: default = %.2fx of it (goal >= 0.80: %s)",
					best.Workers, fnum(best.Median), best.VsLimit, def.VsBest, verdict(def.VsBest, 0.80))
			}
			s += "; rekey/raw per workers: " + strings.Join(per, ", ")
			if rb := t.byKey[keyKMSRaw(p.Tag, d)]; !base && rb != nil && rb.BestKey != "" {
				if b := t.byKey[rb.BestKey]; b != nil {
					s += fmt.Sprintf("; raw loop best at %d goroutines, %s DEKs/s", b.Workers, fnum(b.Median))
				}
			}
			out = append(out, s)
		}
	}
	return out
}

func pairs(ps []float64) string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%.2f", p))
	}
	return strings.Join(out, " ")
}

// kmsNotes explain the section's rows.
func kmsNotes(c *config) []string {
	return []string{
		fmt.Sprintf("kms rows: %d DEKs in one DEK table, wrapped by local-kms key 1 (aws-kms, bound to dek_id, with KCV), rewrapped to key 2 by `rekey run --mode rewrap --runner direct --hsm-rate %g` (the rate is set far above what local-kms serves, so the 10,000/s default budget of awskms: is not what is measured). ReEncrypt rows: both references reach KMS the same way, so rekey calls ReEncrypt and verifies with a target Decrypt (ledger path custodian, checked on every run). unwrap+wrap rows: the target reference adds profile=%s (same fake credentials), which makes keys.CanRewrap false, so rekey does Decrypt + Encrypt + Decrypt (ledger path rekey, checked).", c.KMSDEKs, c.KMSRate, localkms.Profile),
		"kms raw SDK loop: aws-sdk-go-v2 KMS client, w goroutines (w = rekey's --workers of the row it is set against), every DEK of the table once, the same requests, encryption context and checks per DEK as rekey's path; 'vs limit' of a kms rekey row is rekey / raw loop at the same w; 'vs best' is a row's median over the best median of its group (rekey or raw, same path). rekey's figure is its pipeline time (DEK stage and start-up), the raw loop's its own wall time.",
		"kms: local-kms, its namespace bridge and the proxy on 127.0.0.1 (in rekey-bench's process) share the machine's cores with the client being measured; a client's CPU per DEK costs server throughput, which is why rekey's overhead shows.",
	}
}

// kmsUnavailable reports whether err only says local-kms cannot run here
// (not installed, no namespace): the section is then skipped with a note.
func kmsUnavailable(err error) bool {
	return errors.Is(err, localkms.ErrNoBinary) || errors.Is(err, localkms.ErrNoNamespace)
}
