// jsbench: JetStream load through nats.go (Debian's 1.22.1) for bench/jetstream.py.
//
//	jsbench -url URL -mode sync|async|pull -n N [-stream S] [-window 1000] [-batch 100] [-size 16] [-storage file|memory]
//
// sync: js.Publish one at a time (each waits for its PubAck); async:
// js.PublishAsync with at most -window PubAcks outstanding; pull: a durable
// pull consumer fetches -batch at a time and acks each message (explicit
// acks, the batch's last one with AckSync), until N are acked.  The stream
// (subject <stream>.x) is created if missing.  One JSON line out:
// {"mode","n","done","seconds"[,"error"]}.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("url", "nats://127.0.0.1:4222", "server url")
	mode := flag.String("mode", "sync", "sync | async | pull")
	n := flag.Int("n", 10000, "messages")
	stream := flag.String("stream", "BENCH", "stream name")
	window := flag.Int("window", 1000, "async: PubAcks outstanding at most")
	batch := flag.Int("batch", 100, "pull: messages per fetch")
	size := flag.Int("size", 16, "payload bytes")
	storage := flag.String("storage", "file", "file | memory")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after")
	flag.Parse()
	out := map[string]interface{}{"mode": *mode, "n": *n}
	done, seconds, err := run(*url, *mode, *n, *stream, *window, *batch, *size, *storage, *timeout)
	out["done"], out["seconds"] = done, seconds
	if err != nil {
		out["error"] = err.Error()
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	if err != nil {
		os.Exit(1)
	}
}

func run(url, mode string, n int, stream string, window, batch, size int, storage string, timeout time.Duration) (int, float64, error) {
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.MaxWait(10*time.Second), nats.PublishAsyncMaxPending(window))
	if err != nil {
		return 0, 0, err
	}
	st := nats.FileStorage
	if storage == "memory" {
		st = nats.MemoryStorage
	}
	subject := strings.ToLower(stream) + ".x"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{subject}, Storage: st}); err != nil &&
		!strings.Contains(err.Error(), "already in use") {
		return 0, 0, err
	}
	payload := make([]byte, size)
	deadline := time.Now().Add(timeout)
	start := time.Now()
	count := 0
	switch mode {
	case "sync":
		for ; count < n; count++ {
			if _, err := js.Publish(subject, payload); err != nil {
				return count, time.Since(start).Seconds(), err
			}
		}
	case "async":
		for i := 0; i < n; i++ {
			// The window full, wait for room as long as a request may
			// (nats.go gives up after 200 ms by default).
			if _, err := js.PublishAsync(subject, payload, nats.StallWait(10*time.Second)); err != nil {
				return count, time.Since(start).Seconds(), err
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Until(deadline)):
			return n - js.PublishAsyncPending(), time.Since(start).Seconds(), fmt.Errorf("PubAcks still pending: %d", js.PublishAsyncPending())
		}
		count = n
	case "pull":
		sub, err := js.PullSubscribe(subject, "bench", nats.BindStream(stream), nats.AckExplicit())
		if err != nil {
			return 0, 0, err
		}
		start = time.Now()
		for count < n {
			if time.Now().After(deadline) {
				return count, time.Since(start).Seconds(), fmt.Errorf("timed out")
			}
			want := batch
			if n-count < want {
				want = n - count
			}
			msgs, err := sub.Fetch(want, nats.MaxWait(10*time.Second))
			if err != nil {
				return count, time.Since(start).Seconds(), err
			}
			for i, m := range msgs {
				if i == len(msgs)-1 {
					err = m.AckSync()
				} else {
					err = m.Ack()
				}
				if err != nil {
					return count, time.Since(start).Seconds(), err
				}
				count++
			}
		}
	default:
		return 0, 0, fmt.Errorf("unknown mode %q", mode)
	}
	return count, time.Since(start).Seconds(), nil
}
