// jsinterop: the JetStream scenes of eventsvc/test/jsscenes.py played with
// nats.go's js and kv APIs (Debian's golang-github-nats-io-go-nats-dev 1.22.1),
// run against eventsvc and nats-server -js by
// eventsvc/test/test_interop_jetstream.py.  Usage:
//
//	jsinterop URL SCENE PREFIX
//	jsinterop os ...   (the object store: objinterop.go)
//
// It prints one JSON line: {"scene": SCENE, "result": {...}} or
// {"scene": SCENE, "error": "..."}; the result has the same fields as
// jsscenes.EXPECTED[SCENE].
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

type result = map[string]interface{}

func publish(js nats.JetStreamContext, prefix string) (result, error) {
	stream := strings.ToUpper(prefix) + "_PUB"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".pub.>"}}); err != nil {
		return nil, fmt.Errorf("AddStream: %w", err)
	}
	acks := [][]interface{}{}
	for _, p := range []struct{ data, id string }{{"one", ""}, {"two", "id-1"}, {"two", "id-1"}, {"three", ""}} {
		var opts []nats.PubOpt
		if p.id != "" {
			opts = append(opts, nats.MsgId(p.id))
		}
		ack, err := js.Publish(prefix+".pub.a", []byte(p.data), opts...)
		if err != nil {
			return nil, fmt.Errorf("Publish: %w", err)
		}
		if ack.Stream != stream {
			return nil, fmt.Errorf("puback names stream %q", ack.Stream)
		}
		acks = append(acks, []interface{}{ack.Sequence, ack.Duplicate})
	}
	info, err := js.StreamInfo(stream)
	if err != nil {
		return nil, fmt.Errorf("StreamInfo: %w", err)
	}
	return result{"acks": acks, "messages": info.State.Msgs}, nil
}

func pull(js nats.JetStreamContext, prefix string) (result, error) {
	stream := strings.ToUpper(prefix) + "_PULL"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".pull.>"}}); err != nil {
		return nil, fmt.Errorf("AddStream: %w", err)
	}
	for i := 0; i < 25; i++ {
		if _, err := js.Publish(prefix+".pull.job", []byte(fmt.Sprintf("m%d", i))); err != nil {
			return nil, fmt.Errorf("Publish: %w", err)
		}
	}
	sub, err := js.PullSubscribe(prefix+".pull.>", "worker", nats.BindStream(stream), nats.AckExplicit())
	if err != nil {
		return nil, fmt.Errorf("PullSubscribe: %w", err)
	}
	batches := []int{}
	inOrder, n := true, 0
	for b := 0; b < 3; b++ {
		msgs, err := sub.Fetch(10, nats.MaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("Fetch: %w", err)
		}
		batches = append(batches, len(msgs))
		for _, m := range msgs {
			if string(m.Data) != fmt.Sprintf("m%d", n) {
				inOrder = false
			}
			n++
			if err := m.AckSync(); err != nil {
				return nil, fmt.Errorf("AckSync: %w", err)
			}
		}
	}
	info, err := js.ConsumerInfo(stream, "worker")
	if err != nil {
		return nil, fmt.Errorf("ConsumerInfo: %w", err)
	}
	return result{"batches": batches, "in_order": inOrder && n == 25, "num_ack_pending": info.NumAckPending,
		"num_pending": info.NumPending, "delivered": info.Delivered.Stream, "ack_floor": info.AckFloor.Stream}, nil
}

func queue(js nats.JetStreamContext, prefix string) (result, error) {
	stream := strings.ToUpper(prefix) + "_QUEUE"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".queue.>"}}); err != nil {
		return nil, fmt.Errorf("AddStream: %w", err)
	}
	var mu sync.Mutex
	got := map[string][]string{"one": {}, "two": {}}
	done := make(chan struct{})
	member := func(name string) nats.MsgHandler {
		return func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			got[name] = append(got[name], string(m.Data))
			if len(got["one"])+len(got["two"]) == 50 {
				close(done)
			}
		}
	}
	for _, name := range []string{"one", "two"} {
		if _, err := js.QueueSubscribe(prefix+".queue.>", "workers", member(name), nats.Durable("workers"), nats.BindStream(stream)); err != nil {
			return nil, fmt.Errorf("QueueSubscribe: %w", err)
		}
	}
	for i := 0; i < 50; i++ {
		if _, err := js.Publish(prefix+".queue.job", []byte(fmt.Sprintf("q%d", i))); err != nil {
			return nil, fmt.Errorf("Publish: %w", err)
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	distinct := map[string]bool{}
	for _, name := range []string{"one", "two"} {
		for _, d := range got[name] {
			distinct[d] = true
		}
	}
	return result{"received": len(got["one"]) + len(got["two"]), "distinct": len(distinct),
		"both_served": len(got["one"]) > 0 && len(got["two"]) > 0}, nil
}

func acks(js nats.JetStreamContext, prefix string) (result, error) {
	stream := strings.ToUpper(prefix) + "_ACKS"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".acks.>"}}); err != nil {
		return nil, fmt.Errorf("AddStream: %w", err)
	}
	for _, w := range []string{"a", "b", "c"} {
		if _, err := js.Publish(prefix+".acks.x", []byte(w)); err != nil {
			return nil, fmt.Errorf("Publish: %w", err)
		}
	}
	sub, err := js.PullSubscribe(prefix+".acks.>", "acker", nats.BindStream(stream), nats.AckExplicit(), nats.AckWait(30*time.Second))
	if err != nil {
		return nil, fmt.Errorf("PullSubscribe: %w", err)
	}
	first, err := sub.Fetch(3, nats.MaxWait(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("Fetch: %w", err)
	}
	if len(first) != 3 {
		return nil, fmt.Errorf("first fetch gave %d messages", len(first))
	}
	if err := first[0].Nak(); err != nil {
		return nil, fmt.Errorf("Nak: %w", err)
	}
	if err := first[1].Term(); err != nil {
		return nil, fmt.Errorf("Term: %w", err)
	}
	if err := first[2].AckSync(); err != nil {
		return nil, fmt.Errorf("AckSync: %w", err)
	}
	again, err := sub.Fetch(3, nats.MaxWait(2*time.Second))
	if err != nil {
		return nil, fmt.Errorf("Fetch: %w", err)
	}
	againOut := [][]interface{}{}
	for _, m := range again {
		meta, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("Metadata: %w", err)
		}
		againOut = append(againOut, []interface{}{string(m.Data), meta.NumDelivered})
		if err := m.AckSync(); err != nil {
			return nil, fmt.Errorf("AckSync: %w", err)
		}
	}
	left := 0
	if more, err := sub.Fetch(1, nats.MaxWait(time.Second)); err == nil {
		left = len(more)
	} else if err != nats.ErrTimeout {
		return nil, fmt.Errorf("Fetch: %w", err)
	}
	firstOut := []string{}
	for _, m := range first {
		firstOut = append(firstOut, string(m.Data))
	}
	return result{"first": firstOut, "again": againOut, "left": left}, nil
}

func redelivery(js nats.JetStreamContext, prefix string) (result, error) {
	stream := strings.ToUpper(prefix) + "_REDO"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{prefix + ".redo.>"}}); err != nil {
		return nil, fmt.Errorf("AddStream: %w", err)
	}
	if _, err := js.Publish(prefix+".redo.x", []byte("x")); err != nil {
		return nil, fmt.Errorf("Publish: %w", err)
	}
	sub, err := js.PullSubscribe(prefix+".redo.>", "slow", nats.BindStream(stream), nats.AckExplicit(), nats.AckWait(time.Second))
	if err != nil {
		return nil, fmt.Errorf("PullSubscribe: %w", err)
	}
	out := result{}
	for i, name := range []string{"first", "second"} {
		if i == 1 {
			time.Sleep(1500 * time.Millisecond)
		}
		msgs, err := sub.Fetch(1, nats.MaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("Fetch: %w", err)
		}
		meta, err := msgs[0].Metadata()
		if err != nil {
			return nil, fmt.Errorf("Metadata: %w", err)
		}
		out[name] = []interface{}{string(msgs[0].Data), meta.NumDelivered}
		if i == 1 {
			if err := msgs[0].AckSync(); err != nil {
				return nil, fmt.Errorf("AckSync: %w", err)
			}
		}
	}
	return out, nil
}

func kv(js nats.JetStreamContext, prefix string) (result, error) {
	bucket, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: strings.ToUpper(prefix) + "_CFG", History: 5})
	if err != nil {
		return nil, fmt.Errorf("CreateKeyValue: %w", err)
	}
	watcher, err := bucket.WatchAll()
	if err != nil {
		return nil, fmt.Errorf("WatchAll: %w", err)
	}
	defer watcher.Stop()
	revisions := []uint64{}
	for _, kv := range [][2]string{{"color", "red"}, {"color", "blue"}, {"size", "L"}} {
		rev, err := bucket.Put(kv[0], []byte(kv[1]))
		if err != nil {
			return nil, fmt.Errorf("Put: %w", err)
		}
		revisions = append(revisions, rev)
	}
	entry, err := bucket.Get("color")
	if err != nil {
		return nil, fmt.Errorf("Get: %w", err)
	}
	history, err := bucket.History("color")
	if err != nil {
		return nil, fmt.Errorf("History: %w", err)
	}
	if err := bucket.Delete("size"); err != nil {
		return nil, fmt.Errorf("Delete: %w", err)
	}
	watched := [][]string{}
	timeout := time.After(5 * time.Second)
	for len(watched) < 4 {
		select {
		case u := <-watcher.Updates():
			if u == nil {
				continue
			}
			op := "PUT"
			switch u.Operation() {
			case nats.KeyValueDelete:
				op = "DEL"
			case nats.KeyValuePurge:
				op = "PURGE"
			}
			watched = append(watched, []string{u.Key(), string(u.Value()), op})
		case <-timeout:
			return nil, fmt.Errorf("watcher saw only %v", watched)
		}
	}
	return result{"revisions": revisions, "get": []interface{}{string(entry.Value()), entry.Revision()},
		"history": len(history), "watched": watched}, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "os" {
		os.Exit(objectMain(os.Args[2:])) // objinterop.go: the object store
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: jsinterop URL SCENE PREFIX")
		os.Exit(2)
	}
	url, scene, prefix := os.Args[1], os.Args[2], os.Args[3]
	scenes := map[string]func(nats.JetStreamContext, string) (result, error){
		"publish": publish, "pull": pull, "queue": queue, "acks": acks, "redelivery": redelivery, "kv": kv,
	}
	out := map[string]interface{}{"scene": scene}
	play, ok := scenes[scene]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown scene %q\n", scene)
		os.Exit(2)
	}
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err == nil {
		defer nc.Close()
		var js nats.JetStreamContext
		js, err = nc.JetStream(nats.MaxWait(5 * time.Second))
		if err == nil {
			out["result"], err = play(js, prefix)
		}
	}
	if err != nil {
		out["error"] = err.Error()
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
