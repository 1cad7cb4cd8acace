package transforms

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn3x1[context.Context, int, func(schemas.DEKRow), error](&GenDEKsFn{})
	register.DoFn3x1[context.Context, int, func(*schemas.DEKRow) bool, error](&GenRecordsFn{})
}

// GenSpec configures `rekey gen`, the synthetic dataset generator.
type GenSpec struct {
	Data        string
	DEKs        string
	KEK         string
	Wrap        string
	Files       int
	Records     int // per file
	NumDEKs     int
	RecordSize  int
	Seed        uint64
	Encrypted   []string // any of "payload", "note"
	Marker      string   // put into every plaintext (canary tests)
	RowGroup    int      // rows per row group
	Workers     int
	DEKSPerFile int
}

// GenRow is the schema of generated record files.
type GenRow struct {
	ID      int64     `parquet:"id"`
	DEKID   string    `parquet:"dek_id"`
	Tenant  string    `parquet:"tenant"`
	Amount  float64   `parquet:"amount"`
	Payload []byte    `parquet:"payload"`
	Note    []byte    `parquet:"note,optional"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
}

// GenDEKID is the name of generated DEK i.
func GenDEKID(i int) string { return fmt.Sprintf("dek-%07d", i) }

// GenRecordID is the id of record r of file f.
func GenRecordID(spec *GenSpec, f, r int) int64 { return int64(f)*int64(spec.Records) + int64(r) }

// GenPlaintext is the deterministic plaintext of a generated cell, so tests
// can check a migrated dataset without keeping the original plaintext.
func GenPlaintext(spec *GenSpec, column string, id int64) []byte {
	size := spec.RecordSize
	if column == "note" {
		if id%5 == 4 {
			return nil // every fifth note is null
		}
		size = 24 + int(id%17)
	}
	seed := [32]byte{}
	binary.LittleEndian.PutUint64(seed[:], spec.Seed)
	binary.LittleEndian.PutUint64(seed[8:], uint64(id))
	copy(seed[16:], column)
	r := mrand.NewChaCha8(seed)
	b := make([]byte, size)
	_, _ = r.Read(b)
	if spec.Marker != "" && len(b) >= len(spec.Marker) {
		copy(b, spec.Marker)
	}
	return b
}

// genDEKFor names the DEK of a record: records cycle over the DEKs.
func genDEKFor(spec *GenSpec, id int64) string { return GenDEKID(int(id % int64(spec.NumDEKs))) }

func (s *GenSpec) dekFiles() int {
	per := s.dekPerFile()
	return (s.NumDEKs + per - 1) / per
}

func (s *GenSpec) dekPerFile() int {
	if s.DEKSPerFile > 0 {
		return s.DEKSPerFile
	}
	return 100000
}

// GenDEKsFn writes DEK table shard i: fresh random DEKs wrapped by the KEK.
type GenDEKsFn struct {
	Spec GenSpec
	kek  keys.KEK
}

// Setup opens the KEK.
func (f *GenDEKsFn) Setup(ctx context.Context) (err error) {
	f.kek, err = OpenKEK(ctx, f.Spec.KEK, f.Spec.Wrap, f.Spec.Workers)
	if err == nil {
		f.kek = keys.WithRetry(f.kek, keys.RetryPolicy{}) // transient custodian errors
	}
	return err
}

// ProcessElement writes one DEK table file.
func (f *GenDEKsFn) ProcessElement(ctx context.Context, shard int, emit func(schemas.DEKRow)) error {
	per := f.Spec.dekPerFile()
	lo, hi := shard*per, min((shard+1)*per, f.Spec.NumDEKs)
	rows := make([]schemas.DEKRow, hi-lo)
	created := now()
	err := parallel(len(rows), max(f.Spec.Workers, 1), func(_, i int) error {
		b := make([]byte, keys.DEKSize)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		dek, err := keys.NewDEK(b)
		clear(b)
		if err != nil {
			return err
		}
		defer dek.Zero()
		id := GenDEKID(lo + i)
		w, err := f.kek.Wrap(ctx, keys.ByID(id), dek)
		if err != nil {
			return err
		}
		rows[i] = schemas.DEKRow{DEKID: id, KEK: f.kek.URI(), Wrap: f.kek.Mechanism(), Wrapped: w, Created: created, KCV: schemas.KCV(dek.Bytes(), id)}
		return nil
	})
	if err != nil {
		return err
	}
	w, err := createRows[schemas.DEKRow](ctx, storage.Join(f.Spec.DEKs, fmt.Sprintf("part-%05d.parquet", shard)))
	if err != nil {
		return err
	}
	if err := w.write(rows); err != nil {
		w.abort()
		return err
	}
	if err := w.commit(); err != nil {
		return err
	}
	for _, r := range rows {
		emit(r)
	}
	Progress.DEKs.Add(int64(len(rows)))
	return nil
}

// GenRecordsFn writes record file i, encrypting cells with the DEKs it
// unwraps from the side input, each checked against its kcv first (a wrong
// unwrap would otherwise encrypt the dataset under keys its table does not
// hold).
type GenRecordsFn struct {
	Spec    GenSpec
	kek     keys.KEK
	cache   *keys.Cache
	deks    map[string]*schemas.DEKRow
	checked sync.Map // dek_id -> error of its kcv check (nil: right key)
}

// Setup opens the KEK.
func (f *GenRecordsFn) Setup(ctx context.Context) (err error) {
	f.kek, err = OpenKEK(ctx, f.Spec.KEK, f.Spec.Wrap, f.Spec.Workers)
	if err == nil {
		f.kek = keys.WithRetry(f.kek, keys.RetryPolicy{}) // transient custodian errors
	}
	f.cache = processCache(0)
	return err
}

// ProcessElement writes one record file.
func (f *GenRecordsFn) ProcessElement(ctx context.Context, file int, deks func(*schemas.DEKRow) bool) error {
	markStarted()
	if f.deks == nil {
		f.deks = map[string]*schemas.DEKRow{}
		var r schemas.DEKRow
		for deks(&r) {
			c := r
			f.deks[c.DEKID] = &c
		}
	}
	spec := &f.Spec
	enc := map[string]bool{}
	for _, c := range spec.Encrypted {
		enc[c] = true
	}
	rg := spec.RowGroup
	if rg <= 0 {
		rg = 10000
	}
	w, err := createRows[GenRow](ctx, storage.Join(spec.Data, fmt.Sprintf("part-%05d.parquet", file)),
		parquet.MaxRowsPerRowGroup(int64(rg)), parquet.KeyValueMetadata("generator", "rekey gen"))
	if err != nil {
		return err
	}
	rows := make([]GenRow, min(rg, spec.Records))
	for start := 0; start < spec.Records; start += len(rows) {
		n := min(len(rows), spec.Records-start)
		err := parallel(n, max(spec.Workers, 1), func(_, i int) error {
			id := GenRecordID(spec, file, start+i)
			dekID := genDEKFor(spec, id)
			d := f.deks[dekID]
			if d == nil {
				return fmt.Errorf("generated DEK %q missing", dekID)
			}
			key, err := unwrapCached(ctx, f.cache, f.kek, keys.ByID(d.DEKID), d.Wrap, d.Wrapped)
			if err != nil {
				return err
			}
			ok, seen := f.checked.Load(dekID)
			if !seen {
				var cerr error
				if len(d.KCV) > 0 {
					if cerr = schemas.CheckKCV(key.dek.Bytes(), dekID, d.KCV); cerr != nil {
						cerr = fmt.Errorf("generated DEK %q: %s returned a wrong key: %w", dekID, f.kek.URI(), cerr)
					}
				}
				ok, _ = f.checked.LoadOrStore(dekID, cerr)
			}
			if cerr, _ := ok.(error); cerr != nil {
				return cerr
			}
			row := GenRow{ID: id, DEKID: dekID, Tenant: fmt.Sprintf("tenant-%d", id%13), Amount: math.Round(float64(id%100000)*1.37*100) / 100,
				Created: time.Unix(1700000000+id, 0).UTC()}
			for _, col := range []string{"payload", "note"} {
				pt := GenPlaintext(spec, col, id)
				cell := pt
				if pt != nil && enc[col] {
					aad, err := schemas.CellAAD(nil, col, fmt.Sprint(id), dekID)
					if err != nil {
						return err
					}
					if cell, err = schemas.SealCell(nil, key.aead, rand.Reader, pt, aad); err != nil {
						return err
					}
					clear(pt)
				}
				if col == "payload" {
					row.Payload = cell
				} else {
					row.Note = cell
				}
			}
			rows[i] = row
			return nil
		})
		if err != nil {
			w.abort()
			return err
		}
		if err := w.write(rows[:n]); err != nil {
			w.abort()
			return err
		}
		Progress.Records.Add(int64(n))
	}
	Progress.Files.Add(1)
	return w.commit()
}

// Generate builds the generator pipeline.
func Generate(s beam.Scope, spec GenSpec) {
	s = s.Scope("Generate")
	shards := make([]int, spec.dekFiles())
	for i := range shards {
		shards[i] = i
	}
	deks := beam.ParDo(s, &GenDEKsFn{Spec: spec}, beam.CreateList(s, shards))
	files := make([]int, spec.Files)
	for i := range files {
		files[i] = i
	}
	if len(files) == 0 {
		return
	}
	beam.ParDo0(s, &GenRecordsFn{Spec: spec}, beam.Reshuffle(s, beam.CreateList(s, files)), beam.SideInput{Input: deks})
}
