package transforms

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/objfmt"
	"rekey/transforms/ledger"
)

func init() {
	register.DoFn3x1[context.Context, []byte, func([]string), error](&ListObjectsFn{})
	register.DoFn3x1[context.Context, []string, func(UnitResult), error](&ObjectsFn{})
	register.Emitter1[[]string]()
}

// metaSourceETag is the user metadata entry a re-encrypted object gets:
// the ETag of the source object it was made from (--incremental keeps
// objects whose source did not change; the libraries ignore it).
const metaSourceETag = "rekey-source-etag"

// objectBatch is how many objects make one unit (one ledger part).
const objectBatch = 256

// ListObjectsFn emits the objects under Root in batches (an instruction
// file, <key>.instruction, goes with its object, not on its own).
type ListObjectsFn struct {
	Root string
}

// ProcessElement lists Root once per impulse.
func (f *ListObjectsFn) ProcessElement(ctx context.Context, _ []byte, emit func([]string)) error {
	all, err := storage.List(ctx, f.Root)
	if err != nil {
		return err
	}
	var batch []string
	for _, rel := range all {
		if strings.HasSuffix(rel, ".instruction") {
			continue
		}
		batch = append(batch, rel)
		if len(batch) == objectBatch {
			emit(batch)
			batch = nil
		}
	}
	if len(batch) > 0 {
		emit(batch)
	}
	return nil
}

// ListObjects is the objects under root, in batches, redistributed.
func ListObjects(s beam.Scope, root string) beam.PCollection {
	s = s.Scope("ListObjects")
	return beam.Reshuffle(s, beam.ParDo(s, &ListObjectsFn{Root: root}, beam.Impulse(s)))
}

// Objects is the rewrap or reencrypt of objects whose wrapped keys are in
// their metadata (S3 Encryption Client, OSS client-side encryption).
func Objects(s beam.Scope, spec Spec, batches beam.PCollection) beam.PCollection {
	s = s.Scope("Objects")
	return beam.ParDo(s, &ObjectsFn{Spec: spec}, batches)
}

// ObjectsFn migrates a batch of objects. A rewrap unwraps each object's
// key with the source, wraps it with the target (unwrapped again and
// compared), and replaces the object's metadata by a server-side copy
// onto itself, conditional on the ETag it read: the body is never
// downloaded. A reencrypt streams each body through (its GCM tag, or its
// recorded MD5 for CTR, checked before the new object is committed) into
// a new object under target.data with a fresh key wrapped by the target.
type ObjectsFn struct {
	Spec Spec

	src, dst keys.KEK
	opts     objfmt.Options
	lib      string
}

// Setup opens both KEKs (once per process).
func (f *ObjectsFn) Setup(ctx context.Context) (err error) {
	defer noteStop(&err)
	if f.src, f.dst, err = f.Spec.openPair(ctx); err != nil {
		return err
	}
	f.lib = objfmt.LibraryOf(f.Spec.SourceFormat)
	if f.lib == objfmt.OSS && !isAliKMS(f.dst) && f.dst.Mechanism() != schemas.WrapRSAPKCS1 {
		return fmt.Errorf("target KEK %s wraps with %s; OSS objects need rsa-pkcs1 (RSA/NONE/PKCS1Padding) or Alibaba Cloud KMS", redactKEK(f.dst.URI()), f.dst.Mechanism())
	}
	f.opts, err = objfmt.ParseOptions(f.Spec.SourceFormat, f.Spec.SourceFormatOptions)
	return err
}

func isAliKMS(k keys.KEK) bool { return strings.HasPrefix(k.URI(), "alikms") }

// ossAlgOf is the OSS wrap algorithm a KEK writes and reads.
func ossAlgOf(k keys.KEK) string {
	if isAliKMS(k) {
		return objfmt.WrapAliKMS
	}
	return objfmt.WrapRSAPKCS1
}

// ProcessElement migrates one batch of objects.
func (f *ObjectsFn) ProcessElement(ctx context.Context, batch []string, emit func(UnitResult)) (err error) {
	defer noteStop(&err)
	markStarted()
	if err := checkInterrupt(); err != nil {
		return err
	}
	spec := &f.Spec
	unit := storage.Join(spec.SourceData, batch[0])
	part := spec.LedgerPart("objects", batch[0])
	if res, done, err := alreadyDone(ctx, spec, &part, unit); err != nil {
		return err
	} else if done {
		res.Totals.Files = 0 // a batch of objects, not a file
		emit(res)
		return nil
	}
	res := UnitResult{Unit: unit}
	rows := make([]schemas.LedgerRow, len(batch))
	// A rewrap is custodian round trips and a server-side copy: as many
	// in flight as the custodian takes. A reencrypt streams bodies, each
	// with its upload buffers: one per CPU.
	workers := spec.KeyWorkers()
	if spec.Mode == schemas.ModeReencrypt {
		workers = min(workers, spec.workers())
	}
	var stop atomic.Bool // after an error that stops the run, no object starts
	err = parallel(len(batch), workers, func(_, i int) error {
		if stop.Load() {
			return nil
		}
		if err := checkInterrupt(); err != nil {
			stop.Store(true)
			return err
		}
		row, err := f.object(ctx, batch[i])
		if err != nil {
			stop.Store(true)
			return err // stops the run: a custodian refusing us, an unwritable target
		}
		rows[i] = row
		Progress.Files.Add(1)
		cntFiles.Inc(ctx, 1)
		if row.Status == schemas.StatusFailed {
			Progress.Failed.Add(1)
			cntFailed.Inc(ctx, 1)
		}
		return nil
	})
	if err != nil {
		// Objects already changed keep their rows (their ETags and the
		// version that still holds the old key); the others get a failed
		// row, so that --resume does the batch again.
		for i := range rows {
			if rows[i].Status == "" {
				rows[i] = schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitObject, Source: storage.Join(spec.SourceData, batch[i]),
					SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), Status: schemas.StatusFailed, At: now(),
					Error: fmt.Sprintf("not done: the run stopped (%v); --resume does it", err)}
			}
		}
		if werr := ledger.WritePart(ctx, part, rows); werr != nil {
			return errors.Join(err, werr)
		}
		return err
	}
	for i := range rows {
		res.add(&rows[i])
	}
	if err := ledger.WritePart(ctx, part, rows); err != nil {
		return err
	}
	emit(res)
	return spec.MaxFailures.check()
}

// object migrates one object; an error return stops the run.
func (f *ObjectsFn) object(ctx context.Context, rel string) (schemas.LedgerRow, error) {
	spec := &f.Spec
	path := storage.Join(spec.SourceData, rel)
	row := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitObject, Source: path, Target: path,
		SourceKEK: f.src.URI(), TargetKEK: f.dst.URI(), At: now()}
	if spec.Mode == schemas.ModeReencrypt {
		row.Target = storage.Join(spec.TargetData, rel)
	}
	fail := func(format string, a ...any) (schemas.LedgerRow, error) {
		row.Status, row.Error = schemas.StatusFailed, fmt.Sprintf("object %s: ", path)+fmt.Sprintf(format, a...)
		return row, nil
	}
	store, err := storage.Objects(path)
	if err != nil {
		return row, err
	}
	info, err := store.StatObject(ctx, path)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return fail("gone since it was listed: %v", err)
		}
		return row, err
	}
	row.Bytes, row.ETagBefore, row.VersionID = info.Size, info.ETag, info.VersionID
	env, err := objfmt.Parse(info.Meta)
	switch {
	case errors.Is(err, objfmt.ErrNotEncrypted):
		if f.opts.Unencrypted == "skip" {
			row.Status, row.Error = schemas.StatusSkipped, fmt.Sprintf("object %s: %v (format_options.unencrypted: skip)", path, err)
			return row, nil
		}
		return fail("%v; set source.format_options.unencrypted: skip to pass such objects", err)
	case errors.Is(err, objfmt.ErrInstruction):
		return fail("its wrapped key is in an instruction file (%s.instruction), which rekey does not read yet; the object is left as it is", rel)
	case err != nil:
		return fail("%v; the object is left as it is", err)
	}
	if env.Library != f.lib {
		return fail("written by %s client-side encryption, the job's source.format is %s", env.Library, spec.SourceFormat)
	}
	row.DEKID = keyName(string(env.Key))
	if env.Library == objfmt.OSS && env.WrapAlg != ossAlgOf(f.src) {
		// Not the source custodian's kind of wrap: already the target's
		// (an earlier run), or someone else's.
		if env.WrapAlg == ossAlgOf(f.dst) && spec.Mode == schemas.ModeRewrap {
			mech, b, _ := f.binding(env, f.dst)
			if back, err := f.dst.Unwrap(ctx, b, mech, env.Key); err == nil {
				back.Zero()
				row.Status, row.Error, row.ETagAfter = schemas.StatusSkipped, fmt.Sprintf("object %s: already wrapped by target.kek (an earlier run or attempt)", path), info.ETag
				return row, nil
			}
		}
		return fail("wrapped with %s, which source.kek %s does not unwrap; the object is left as it is", env.WrapAlg, redactKEK(f.src.URI()))
	}
	mech, b, err := f.binding(env, f.src)
	if err != nil {
		return fail("%v", err)
	}
	key, err := f.src.Unwrap(ctx, b, mech, env.Key)
	if err != nil {
		if isFatalKeyErr(err) {
			return row, err
		}
		// Already wrapped by the target (an earlier attempt of a run)?
		if spec.Mode == schemas.ModeRewrap {
			tmech, tb, _ := f.binding(env, f.dst)
			if back, err2 := f.dst.Unwrap(ctx, tb, tmech, env.Key); err2 == nil {
				back.Zero()
				row.Status, row.Error, row.ETagAfter = schemas.StatusSkipped, fmt.Sprintf("object %s: already wrapped by target.kek (an earlier run or attempt)", path), info.ETag
				return row, nil
			}
		}
		return fail("unwrap its key (%s, %s) with %s: %v", env.KeyFields(), env.Describe(), redactKEK(f.src.URI()), err)
	}
	defer key.Zero()
	var iv *keys.DEK
	if env.Library == objfmt.OSS {
		if iv, err = f.src.Unwrap(ctx, b, mech, env.WrappedIV); err != nil {
			if isFatalKeyErr(err) {
				return row, err
			}
			return fail("unwrap its IV (client-side-encryption-start) with %s: %v", redactKEK(f.src.URI()), err)
		}
		defer iv.Zero()
	}
	if spec.Mode == schemas.ModeRewrap {
		return f.rewrap(ctx, store, path, info, env, key, iv, row)
	}
	return f.reencrypt(ctx, store, path, row.Target, info, env, key, iv, row)
}

// binding is how a custodian bound the object's key: S3EC kms+context to
// its material description (the KMS encryption context); the others to
// nothing. mech is the wrap to name to the custodian.
func (f *ObjectsFn) binding(env *objfmt.Envelope, k keys.KEK) (string, keys.Binding, error) {
	mech := f.Spec.SourceWrap
	if k == f.dst || mech == "" {
		mech = k.Mechanism()
	}
	switch env.WrapAlg {
	case objfmt.WrapKMSContext, objfmt.WrapKMS:
		return mech, keys.Binding{Context: env.Context}, nil
	case objfmt.WrapAliKMS:
		return mech, keys.Binding{}, nil
	case objfmt.WrapRSAPKCS1:
		return schemas.WrapRSAPKCS1, keys.Binding{}, nil
	}
	return "", keys.Binding{}, fmt.Errorf("wrap algorithm %s: not supported yet (rekey migrates %s, %s, %s and %s wraps)", env.WrapAlg, objfmt.WrapKMSContext, objfmt.WrapKMS, objfmt.WrapRSAPKCS1, objfmt.WrapAliKMS)
}

// wrapChecked wraps secret with the target under b, verified.
func (f *ObjectsFn) wrapChecked(ctx context.Context, b keys.Binding, secret *keys.DEK) ([]byte, error) {
	return wrapVerified(ctx, &f.Spec, f.dst, b, secret)
}

func (f *ObjectsFn) rewrap(ctx context.Context, store storage.ObjectStore, path string, info storage.ObjectInfo, env *objfmt.Envelope, key, iv *keys.DEK, row schemas.LedgerRow) (schemas.LedgerRow, error) {
	fail := func(err error) (schemas.LedgerRow, error) {
		if isFatalKeyErr(err) {
			return row, err
		}
		row.Status, row.Error = schemas.StatusFailed, fmt.Sprintf("object %s: %v; the object is left as it is", path, err)
		return row, nil
	}
	_, b, _ := f.binding(env, f.dst)
	var wrapAlg string
	if env.Library == objfmt.OSS {
		// The target's wrap: the secrets change form between RSA (bytes)
		// and Alibaba KMS (their base64 text).
		wrapAlg = f.ossWrapAlg()
		var err error
		if key, err = ossConvert(env.WrapAlg, wrapAlg, key); err != nil {
			return fail(err)
		}
		defer key.Zero()
		if iv, err = ossConvert(env.WrapAlg, wrapAlg, iv); err != nil {
			return fail(err)
		}
		defer iv.Zero()
	}
	w, err := f.wrapChecked(ctx, b, key)
	if err != nil {
		return fail(err)
	}
	var wiv []byte
	if iv != nil {
		if wiv, err = f.wrapChecked(ctx, b, iv); err != nil {
			return fail(fmt.Errorf("IV: %w", err))
		}
	}
	meta, err := env.Rewrapped(info.Meta, w, wiv, wrapAlg, f.opts.MatDesc)
	if err != nil {
		return fail(err)
	}
	after, err := store.ReplaceMeta(ctx, path, info.ETag, info.Size, meta)
	if errors.Is(err, storage.ErrChanged) {
		return fail(fmt.Errorf("it changed while rekey read it (ETag %s no longer current); run again to migrate its new version", info.ETag))
	}
	if err != nil {
		// This object's own trouble (gone, archived, denied on its
		// prefix): a failed row; the failure budget stops a run where
		// every object fails.
		return fail(fmt.Errorf("replace its metadata: %w", err))
	}
	// row.VersionID stays the version read: after a rewrap it is the
	// noncurrent version that still holds the old wrapped key.
	row.Status, row.Proof, row.ETagAfter = schemas.StatusMigrated, schemas.ProofNone, after.ETag
	row.NewDEKID, row.Checksum = keyName(string(w)), checksum(w, wiv)
	return row, nil
}

func (f *ObjectsFn) reencrypt(ctx context.Context, store storage.ObjectStore, path, target string, info storage.ObjectInfo, env *objfmt.Envelope, key, iv *keys.DEK, row schemas.LedgerRow) (schemas.LedgerRow, error) {
	fail := func(err error) (schemas.LedgerRow, error) {
		if isFatalKeyErr(err) {
			return row, err
		}
		row.Status, row.Error = schemas.StatusFailed, fmt.Sprintf("object %s: %v; nothing was written for it", path, err)
		return row, nil
	}
	if env.CEKAlg == objfmt.Committed {
		return fail(fmt.Errorf("content %s (S3EC v3 key-committing AES-GCM): reencrypt not supported yet; rewrap it", env.CEKAlg))
	}
	if f.Spec.Incremental {
		// An object this job wrote from the same source version is kept.
		if t, err := store.StatObject(ctx, target); err == nil && t.Meta[metaSourceETag] == info.ETag {
			row.Status, row.Error, row.ETagAfter = schemas.StatusSkipped, fmt.Sprintf("object %s: unchanged since the run that wrote %s (incremental)", path, target), t.ETag
			return row, nil
		}
	}
	in, err := storage.Open(ctx, path)
	if err != nil {
		return fail(fmt.Errorf("read it: %w", err))
	}
	defer in.Close()
	body := io.NewSectionReader(in, 0, in.Size())
	var plain io.Reader
	var sum = md5.New()
	secret := key.Bytes()
	switch env.Library {
	case objfmt.S3EC:
		r, err := objfmt.NewGCM(body, in.Size(), secret, env.IV)
		if err != nil {
			return fail(err)
		}
		plain = r
	case objfmt.OSS:
		k, err := objfmt.OSSRaw(env.WrapAlg, secret)
		if err != nil {
			return fail(err)
		}
		v, err := objfmt.OSSRaw(env.WrapAlg, iv.Bytes())
		if err != nil {
			return fail(err)
		}
		s, err := objfmt.CTRStream(k, v)
		if err != nil {
			return fail(err)
		}
		plain = io.TeeReader(&cipherReader{s: s, r: body}, sum)
	}
	// A fresh key (and IV) for the new object, wrapped by the target.
	fresh, err := freshDEK(ctx, &f.Spec, f.dst)
	if err != nil {
		return fail(fmt.Errorf("a new key: %w", err))
	}
	defer fresh.Zero()
	var meta map[string]string
	var out storage.Writer
	var enc io.WriteCloser
	plainLen := env.PlainLen
	if plainLen < 0 && env.Library == objfmt.S3EC {
		plainLen = in.Size() - 16
	} else if plainLen < 0 {
		plainLen = in.Size()
	}
	switch env.Library {
	case objfmt.S3EC:
		ctxMap := objfmt.S3ECContext(env.Context)
		w, err := f.wrapChecked(ctx, keys.Binding{Context: ctxMap}, fresh)
		if err != nil {
			return fail(err)
		}
		nonce := make([]byte, 12)
		if _, err := rand.Read(nonce); err != nil {
			return fail(err)
		}
		if meta, err = objfmt.S3ECMeta(w, nonce, ctxMap, plainLen); err != nil {
			return fail(err)
		}
		meta[metaSourceETag] = info.ETag
		if out, err = store.CreateObject(ctx, target, meta); err != nil {
			return row, outputErr(target, err)
		}
		gw, err := objfmt.NewGCMSealer(out, fresh.Bytes(), nonce, in.Size()-16) // the stored size, not the metadata's claim
		if err != nil {
			_ = out.Abort()
			return fail(err)
		}
		enc = gw
		row.NewDEKID, row.Checksum = keyName(string(w)), checksum(w)
	case objfmt.OSS:
		ivb := make([]byte, 16)
		if _, err := rand.Read(ivb); err != nil {
			return fail(err)
		}
		wrapAlg := f.ossWrapAlg()
		k, v := objfmt.OSSSecret(wrapAlg, fresh.Bytes()), objfmt.OSSSecret(wrapAlg, ivb)
		ks, err := keys.NewDEK(k)
		if err != nil {
			return fail(err)
		}
		defer ks.Zero()
		vs, err := keys.NewDEK(v)
		if err != nil {
			return fail(err)
		}
		defer vs.Zero()
		_, b, _ := f.binding(env, f.dst)
		wk, err := f.wrapChecked(ctx, b, ks)
		if err != nil {
			return fail(err)
		}
		wv, err := f.wrapChecked(ctx, b, vs)
		if err != nil {
			return fail(fmt.Errorf("IV: %w", err))
		}
		md := env.MatDesc
		if f.opts.MatDesc != "" {
			md = f.opts.MatDesc
		}
		meta = objfmt.OSSMeta(wk, wv, wrapAlg, md, env.PlainLen, env.PlainMD5)
		meta[metaSourceETag] = info.ETag
		if out, err = store.CreateObject(ctx, target, meta); err != nil {
			return row, outputErr(target, err)
		}
		s, err := objfmt.CTRStream(fresh.Bytes(), ivb)
		if err != nil {
			_ = out.Abort()
			return fail(err)
		}
		enc = nopCloser{&cipherWriter{s: s, w: out}}
		row.NewDEKID, row.Checksum = keyName(string(wk)), checksum(wk, wv)
	}
	n, err := io.Copy(enc, plain)
	if err == nil {
		err = enc.Close()
	}
	if err == nil && env.PlainLen >= 0 && n != env.PlainLen {
		err = fmt.Errorf("%w: %d plaintext bytes, the metadata records %d", objfmt.ErrAuth, n, env.PlainLen)
	}
	proof := schemas.ProofBody
	if err == nil && env.Library == objfmt.OSS {
		switch {
		case env.PlainMD5 != nil && !bytes.Equal(sum.Sum(nil), env.PlainMD5):
			err = fmt.Errorf("%w: the plaintext's MD5 is not the recorded client-side-encryption-unencrypted-content-md5 (a changed body or a wrong key)", objfmt.ErrAuth)
		case env.PlainMD5 == nil:
			// AES-CTR has no tag: with no recorded MD5 there was nothing
			// to check the key or the body against.
			proof = schemas.ProofNone
		}
	}
	if err == nil {
		// The body read must be the version whose metadata gave the key:
		// a body replaced meanwhile would pass AES-CTR without an MD5.
		if now, serr := store.StatObject(ctx, path); serr != nil || now.ETag != info.ETag {
			err = fmt.Errorf("it changed while rekey read it (ETag %s no longer current); run again to migrate its new version", info.ETag)
		}
	}
	if err != nil {
		_ = out.Abort()
		return fail(err)
	}
	if err := out.Commit(); err != nil {
		return row, outputErr(target, err)
	}
	after, err := store.StatObject(ctx, target)
	if err != nil {
		return row, outputErr(target, err)
	}
	row.Status, row.Proof, row.ETagAfter = schemas.StatusMigrated, proof, after.ETag
	return row, nil
}

type cipherReader struct {
	s interface{ XORKeyStream(dst, src []byte) }
	r io.Reader
}

func (c *cipherReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.s.XORKeyStream(p[:n], p[:n])
	return n, err
}

type cipherWriter struct {
	s   interface{ XORKeyStream(dst, src []byte) }
	w   io.Writer
	buf []byte
}

func (c *cipherWriter) Write(p []byte) (int, error) {
	c.buf = append(c.buf[:0], p...)
	c.s.XORKeyStream(c.buf, c.buf)
	if _, err := c.w.Write(c.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// ossWrapAlg is the OSS wrap algorithm of the target KEK: RSA PKCS#1 for a
// PKCS#11 key pair, KMS/ALICLOUD for Alibaba Cloud KMS.
func (f *ObjectsFn) ossWrapAlg() string { return ossAlgOf(f.dst) }

// ossConvert is secret (as wrapped under wrap algorithm from) in the form
// wrap algorithm to wraps.
func ossConvert(from, to string, secret *keys.DEK) (*keys.DEK, error) {
	raw, err := objfmt.OSSRaw(from, secret.Bytes())
	if err != nil {
		return nil, err
	}
	return keys.NewDEK(objfmt.OSSSecret(to, raw))
}

// VerifyKindObjects is the kind of a verify unit of objects.
const VerifyKindObjects = "objects"

func init() {
	register.DoFn3x1[context.Context, []string, func(VerifyResult), error](&VerifyObjectsFn{})
}

// VerifyObjectsFn checks a batch of objects at the target: each one's key
// (and OSS IV) unwraps with the target KEK and its whole body decrypts (GCM
// tag; CTR: the recorded MD5 and length, when recorded).
type VerifyObjectsFn struct {
	Spec VerifySpec

	kek  keys.KEK
	opts objfmt.Options
}

// Setup opens the target KEK.
func (f *VerifyObjectsFn) Setup(ctx context.Context) (err error) {
	if f.kek, err = f.Spec.records().openKEK(ctx, f.Spec.TargetKEK, f.Spec.TargetWrap); err != nil {
		return err
	}
	f.opts, err = objfmt.ParseOptions(f.Spec.TargetFormat, f.Spec.TargetFormatOptions)
	return err
}

// ProcessElement verifies one batch.
func (f *VerifyObjectsFn) ProcessElement(ctx context.Context, batch []string, emit func(VerifyResult)) error {
	res := VerifyResult{Kind: VerifyKindObjects, Path: storage.Join(f.Spec.TargetData, batch[0]), TargetFiles: len(batch)}
	for _, rel := range batch {
		path := storage.Join(f.Spec.TargetData, rel)
		res.Read++
		res.Counts.Target++
		res.Totals.Objects++
		err := f.verify(ctx, path)
		switch {
		case errors.Is(err, objfmt.ErrNotEncrypted) && f.opts.Unencrypted == "skip":
			res.Totals.ObjectsSkipped++
		case err != nil:
			res.Counts.Failed++
			res.Totals.ObjectsFailed++
			res.Totals.Failed++
			res.note(path, "", "", err.Error())
		default:
			res.Verified++
			res.Counts.Migrated++
			res.Totals.ObjectsMigrated++
		}
		Progress.Files.Add(1)
	}
	emit(res)
	return nil
}

func (f *VerifyObjectsFn) verify(ctx context.Context, path string) error {
	store, err := storage.Objects(path)
	if err != nil {
		return err
	}
	info, err := store.StatObject(ctx, path)
	if err != nil {
		return err
	}
	env, err := objfmt.Parse(info.Meta)
	if err != nil {
		return err
	}
	mech, b := f.kek.Mechanism(), keys.Binding{}
	switch env.WrapAlg {
	case objfmt.WrapKMSContext, objfmt.WrapKMS:
		b.Context = env.Context
	case objfmt.WrapRSAPKCS1:
		mech = schemas.WrapRSAPKCS1
	}
	key, err := f.kek.Unwrap(ctx, b, mech, env.Key)
	if err != nil {
		return fmt.Errorf("its key does not unwrap with the target KEK: %w", err)
	}
	defer key.Zero()
	in, err := storage.Open(ctx, path)
	if err != nil {
		return err
	}
	defer in.Close()
	body := io.NewSectionReader(in, 0, in.Size())
	switch env.Library {
	case objfmt.S3EC:
		if env.CEKAlg == objfmt.Committed {
			return nil // the key unwrapped; the committing suite's body is the library's to check
		}
		r, err := objfmt.NewGCM(body, in.Size(), key.Bytes(), env.IV)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, r)
		return err
	default:
		iv, err := f.kek.Unwrap(ctx, b, mech, env.WrappedIV)
		if err != nil {
			return fmt.Errorf("its IV does not unwrap with the target KEK: %w", err)
		}
		defer iv.Zero()
		k, err := objfmt.OSSRaw(env.WrapAlg, key.Bytes())
		if err != nil {
			return err
		}
		v, err := objfmt.OSSRaw(env.WrapAlg, iv.Bytes())
		if err != nil {
			return err
		}
		s, err := objfmt.CTRStream(k, v)
		if err != nil {
			return err
		}
		sum := md5.New()
		n, err := io.Copy(sum, &cipherReader{s: s, r: body})
		if err != nil {
			return err
		}
		if env.PlainLen >= 0 && n != env.PlainLen {
			return fmt.Errorf("%w: %d bytes, the metadata records %d", objfmt.ErrAuth, n, env.PlainLen)
		}
		if env.PlainMD5 != nil && !bytes.Equal(sum.Sum(nil), env.PlainMD5) {
			return fmt.Errorf("%w: MD5 mismatch (a changed body or a wrong key)", objfmt.ErrAuth)
		}
		return nil
	}
}
