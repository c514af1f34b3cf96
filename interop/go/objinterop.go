// objinterop: nats.go's ObjectStore (Debian's nats.go 1.22.1) against eventsvc
// and nats-server -js, run by eventsvc/test/test_interop_objectstore.py.
// Usage (through jsinterop's main):
//
//	jsinterop os URL scene PREFIX        the object scene: put, get, info, list,
//	                                     update, links, watch, delete, status
//	jsinterop os URL put BUCKET NAME SIZE  a SIZE-byte object (pseudo-random)
//	jsinterop os URL get BUCKET NAME      read it back through Get
//
// Each prints one JSON line, {"scene": ..., "result": {...}} or
// {"scene": ..., "error": "..."}, as jsinterop's scenes do.
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// objectScene plays put, get, info, list, update, links, watch and delete on
// one bucket and reports what a user of nats.go sees.
func objectScene(js nats.JetStreamContext, prefix string) (result, error) {
	name := strings.ToUpper(prefix) + "_FILES"
	obs, err := js.CreateObjectStore(&nats.ObjectStoreConfig{Bucket: name, Description: "go scene"})
	if err != nil {
		return nil, fmt.Errorf("CreateObjectStore: %w", err)
	}
	watcher, err := obs.Watch()
	if err != nil {
		return nil, fmt.Errorf("Watch: %w", err)
	}
	defer watcher.Stop()
	initial := <-watcher.Updates() // nil: nothing in the bucket yet
	// What the watcher saw: every meta update, in order. Each is taken before the
	// next change: a put of the same name rolls the meta subject up, and under load a
	// watcher that has not yet been sent the older meta would never see it (on either
	// server), which made the scene's answer depend on timing.
	watched := [][]interface{}{}
	seen := func() {
		select {
		case u := <-watcher.Updates():
			if u != nil {
				watched = append(watched, []interface{}{u.Name, u.Deleted})
			}
		case <-time.After(10 * time.Second):
		}
	}

	// Three chunks of 128 KiB and a short last one.
	big := make([]byte, 3*128*1024+100)
	rand.New(rand.NewSource(7)).Read(big)
	info, err := obs.PutBytes("big.bin", big)
	if err != nil {
		return nil, fmt.Errorf("PutBytes: %w", err)
	}
	seen()
	sum := sha256.Sum256(big)
	digestOK := info.Digest == "SHA-256="+base64.URLEncoding.EncodeToString(sum[:])
	if _, err := obs.PutString("a.txt", "alpha"); err != nil {
		return nil, fmt.Errorf("PutString: %w", err)
	}
	seen()
	if _, err := obs.Put(&nats.ObjectMeta{Name: "small", Description: "five byte chunks",
		Headers: nats.Header{"X-Kind": []string{"test"}}, Opts: &nats.ObjectMetaOptions{ChunkSize: 5}},
		strings.NewReader("0123456789ab")); err != nil {
		return nil, fmt.Errorf("Put small: %w", err)
	}
	seen()
	got, err := obs.GetBytes("big.bin")
	if err != nil {
		return nil, fmt.Errorf("GetBytes: %w", err)
	}
	small, err := obs.GetInfo("small")
	if err != nil {
		return nil, fmt.Errorf("GetInfo: %w", err)
	}
	smallData, err := obs.GetString("small")
	if err != nil {
		return nil, fmt.Errorf("GetString: %w", err)
	}
	// A second put of a name replaces it (the old chunks are purged).
	if _, err := obs.PutString("a.txt", "alpha two"); err != nil {
		return nil, fmt.Errorf("PutString again: %w", err)
	}
	seen()
	replaced, err := obs.GetString("a.txt")
	if err != nil {
		return nil, fmt.Errorf("GetString a.txt: %w", err)
	}
	// Rename with UpdateMeta.
	if err := obs.UpdateMeta("small", &nats.ObjectMeta{Name: "renamed", Description: "changed"}); err != nil {
		return nil, fmt.Errorf("UpdateMeta: %w", err)
	}
	renamed, err := obs.GetInfo("renamed")
	if err != nil {
		return nil, fmt.Errorf("GetInfo renamed: %w", err)
	}
	renamedData, err := obs.GetString("renamed")
	if err != nil {
		return nil, fmt.Errorf("GetString renamed: %w", err)
	}
	_, oldErr := obs.GetInfo("small")
	// Links: to an object here, and to another bucket.
	if _, err := obs.AddLink("link.bin", info); err != nil {
		return nil, fmt.Errorf("AddLink: %w", err)
	}
	viaLink, err := obs.GetBytes("link.bin")
	if err != nil {
		return nil, fmt.Errorf("GetBytes link: %w", err)
	}
	other, err := js.CreateObjectStore(&nats.ObjectStoreConfig{Bucket: name + "_OTHER"})
	if err != nil {
		return nil, fmt.Errorf("CreateObjectStore other: %w", err)
	}
	if _, err := other.PutString("there", "in the other bucket"); err != nil {
		return nil, fmt.Errorf("PutString other: %w", err)
	}
	bucketLink, err := obs.AddBucketLink("other", other)
	if err != nil {
		return nil, fmt.Errorf("AddBucketLink: %w", err)
	}
	there, err := other.GetInfo("there")
	if err != nil {
		return nil, fmt.Errorf("GetInfo there: %w", err)
	}
	if _, err := obs.AddLink("there.link", there); err != nil {
		return nil, fmt.Errorf("AddLink there: %w", err)
	}
	viaOther, err := obs.GetString("there.link")
	if err != nil {
		return nil, fmt.Errorf("GetString there.link: %w", err)
	}
	// Delete: gone for Get, shown as deleted with the option, its chunks purged.
	if err := obs.Delete("big.bin"); err != nil {
		return nil, fmt.Errorf("Delete: %w", err)
	}
	_, deletedErr := obs.Get("big.bin")
	deletedInfo, err := obs.GetInfo("big.bin", nats.GetObjectInfoShowDeleted())
	if err != nil {
		return nil, fmt.Errorf("GetInfo deleted: %w", err)
	}
	list, err := obs.List()
	if err != nil {
		return nil, fmt.Errorf("List: %w", err)
	}
	names := []string{}
	for _, entry := range list {
		names = append(names, entry.Name)
	}
	sort.Strings(names)
	status, err := obs.Status()
	if err != nil {
		return nil, fmt.Errorf("Status: %w", err)
	}
	stream, err := js.StreamInfo("OBJ_" + name)
	if err != nil {
		return nil, fmt.Errorf("StreamInfo: %w", err)
	}
	// The rest of what the watcher saw.
	timeout := time.After(5 * time.Second)
	for len(watched) < 9 {
		select {
		case u := <-watcher.Updates():
			if u != nil {
				watched = append(watched, []interface{}{u.Name, u.Deleted})
			}
		case <-timeout:
			return nil, fmt.Errorf("watcher saw only %v", watched)
		}
	}
	// Another watcher, without deletes: the current metas, then nil.
	quiet, err := obs.Watch(nats.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("Watch IgnoreDeletes: %w", err)
	}
	current := []string{}
	for u := range quiet.Updates() {
		if u == nil {
			break
		}
		current = append(current, u.Name)
	}
	quiet.Stop()
	sort.Strings(current)
	// The buckets, by name and by status (STREAM.LIST and NAMES filtered on $O.*.C.>).
	buckets, statuses := []string{}, []string{}
	for n := range js.ObjectStoreNames() {
		buckets = append(buckets, n)
	}
	for st := range js.ObjectStores() {
		statuses = append(statuses, st.Bucket())
	}
	sort.Strings(buckets)
	sort.Strings(statuses)
	if err := obs.Seal(); err != nil {
		return nil, fmt.Errorf("Seal: %w", err)
	}
	_, sealedErr := obs.PutString("late", "refused")
	sealed, err := obs.Status()
	if err != nil {
		return nil, fmt.Errorf("Status sealed: %w", err)
	}
	if err := js.DeleteObjectStore(name + "_OTHER"); err != nil {
		return nil, fmt.Errorf("DeleteObjectStore: %w", err)
	}
	_, goneErr := js.ObjectStore(name + "_OTHER")
	return result{
		"initial_nil": initial == nil,
		"big":         []interface{}{info.Size, info.Chunks, digestOK, string(got) == string(big)},
		"small":       []interface{}{small.Size, small.Chunks, small.Description, small.Headers.Get("X-Kind"), smallData},
		"replaced":    replaced,
		"renamed":     []interface{}{renamed.Name, renamed.Description, renamedData, errors.Is(oldErr, nats.ErrObjectNotFound)},
		"links":       []interface{}{string(viaLink) == string(big), bucketLink.Opts.Link.Bucket, viaOther},
		"deleted":     []interface{}{errors.Is(deletedErr, nats.ErrObjectNotFound), deletedInfo.Deleted, deletedInfo.Size},
		"list":        names,
		"status":      []interface{}{status.Bucket(), status.Description(), status.BackingStore(), status.Sealed()},
		"stream":      []interface{}{stream.Config.Subjects, stream.Config.AllowRollup, stream.Config.Discard.String()},
		"watched":     watched,
		"sealed":      []interface{}{sealed.Sealed(), sealedErr != nil},
		"bucket_gone": errors.Is(goneErr, nats.ErrStreamNotFound),
		"current":     current,
		"buckets":     []interface{}{buckets, statuses},
	}, nil
}

// putBig puts SIZE pseudo-random bytes as NAME in BUCKET (made if missing,
// file storage) and reports the digest it computed and the one the store keeps.
func putBig(js nats.JetStreamContext, bucket, name string, size int) (result, error) {
	obs, err := js.ObjectStore(bucket)
	if errors.Is(err, nats.ErrStreamNotFound) {
		obs, err = js.CreateObjectStore(&nats.ObjectStoreConfig{Bucket: bucket, Storage: nats.FileStorage})
	}
	if err != nil {
		return nil, fmt.Errorf("ObjectStore: %w", err)
	}
	hash := sha256.New()
	data := io.TeeReader(io.LimitReader(rand.New(rand.NewSource(int64(size))), int64(size)), hash)
	start := time.Now()
	info, err := obs.Put(&nats.ObjectMeta{Name: name}, data)
	if err != nil {
		return nil, fmt.Errorf("Put: %w", err)
	}
	seconds := time.Since(start).Seconds()
	return result{"seconds": seconds, "size": info.Size, "chunks": info.Chunks,
		"digest": "SHA-256=" + base64.URLEncoding.EncodeToString(hash.Sum(nil)), "info_digest": info.Digest}, nil
}

// getBig reads NAME from BUCKET through Get (which checks the digest at the
// end) and reports the digest of what it read and how long it took.
func getBig(js nats.JetStreamContext, bucket, name string) (result, error) {
	obs, err := js.ObjectStore(bucket)
	if err != nil {
		return nil, fmt.Errorf("ObjectStore: %w", err)
	}
	start := time.Now()
	object, err := obs.Get(name)
	if err != nil {
		return nil, fmt.Errorf("Get: %w", err)
	}
	defer object.Close()
	hash := sha256.New()
	n, err := io.Copy(hash, object)
	if err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	seconds := time.Since(start).Seconds()
	return result{"seconds": seconds, "size": n,
		"digest": "SHA-256=" + base64.URLEncoding.EncodeToString(hash.Sum(nil))}, nil
}

// objectMain runs ARGS (URL MODE ...) and returns the exit status.
func objectMain(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: jsinterop os URL scene PREFIX | put BUCKET NAME SIZE | get BUCKET NAME")
		return 2
	}
	url, mode := args[0], args[1]
	out := map[string]interface{}{"scene": "os-" + mode}
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err == nil {
		defer nc.Close()
		var js nats.JetStreamContext
		js, err = nc.JetStream(nats.MaxWait(10 * time.Second))
		if err == nil {
			switch {
			case mode == "scene" && len(args) == 3:
				out["result"], err = objectScene(js, args[2])
			case mode == "put" && len(args) == 5:
				var size int
				if size, err = strconv.Atoi(args[4]); err == nil {
					out["result"], err = putBig(js, args[2], args[3], size)
				}
			case mode == "get" && len(args) == 4:
				out["result"], err = getBig(js, args[2], args[3])
			default:
				err = fmt.Errorf("unknown object mode %v", args[1:])
			}
		}
	}
	if err != nil {
		out["error"] = err.Error()
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	return 0
}
