// eventbench: the two out-of-process ends of bench/events.py, on the
// official Go client and Go's net/http, so that eventsvc is the bottleneck.
//
//	eventbench target -addr 127.0.0.1:0 -report FILE
//	    An HTTP target: answers every POST 200 at once and counts the events
//	    in it (a JSON object is one event, an array is as many as it holds).
//	    It writes "LISTENING host:port" on stdout, then, on each GET /stats,
//	    answers {"posts":N,"events":N,"first":UNIXNANO,"last":UNIXNANO,"ids":N}
//	    where ids is the number of distinct event_ids seen (duplicates are
//	    events - ids).  -ids FILE appends every event_id seen, one a line.
//
//	eventbench produce -url nats://... -events N -inflight K -conns C
//	    Publishes N valid events on event.event_feed with a reply subject, at
//	    most K unanswered per connection, over C connections, and prints
//	    one line of JSON: acked, refused, seconds, acked_ids_file.
//	    -acked FILE writes the event_ids acknowledged with success, one a line.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: eventbench target|produce [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "target":
		target(os.Args[2:])
	case "produce":
		produce(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: eventbench target|produce [flags]")
		os.Exit(2)
	}
}

type idOnly struct {
	EventID string `json:"event_id"`
}

func target(args []string) {
	fs := flag.NewFlagSet("target", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	idsPath := fs.String("ids", "", "append every event_id seen to this file")
	fs.Parse(args)

	var mu sync.Mutex
	var posts, events int64
	var first, last int64
	seen := map[string]struct{}{}
	var idsOut *bufio.Writer
	if *idsPath != "" {
		f, err := os.OpenFile(*idsPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		idsOut = bufio.NewWriter(f)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if idsOut != nil {
			idsOut.Flush()
		}
		fmt.Fprintf(w, `{"posts":%d,"events":%d,"first":%d,"last":%d,"ids":%d}`, posts, events, first, last, len(seen))
		mu.Unlock()
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var raw json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		var batch []idOnly
		if len(raw) > 0 && raw[0] == '[' {
			if err := json.Unmarshal(raw, &batch); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
		} else {
			var one idOnly
			if err := json.Unmarshal(raw, &one); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			batch = []idOnly{one}
		}
		now := time.Now().UnixNano()
		mu.Lock()
		posts++
		events += int64(len(batch))
		if first == 0 {
			first = now
		}
		last = now
		for _, e := range batch {
			seen[e.EventID] = struct{}{}
			if idsOut != nil {
				idsOut.WriteString(e.EventID)
				idsOut.WriteByte('\n')
			}
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %s\n", ln.Addr())
	os.Stdout.Sync()
	http.Serve(ln, mux)
}

const eventTemplate = `{"event_id":"%s","type":{"name":"event_feed"},"producer":{"id":"urn:chef:svc:bench","producer_name":"bench","producer_type":"service","tags":["t"]},"tags":["a"],"published":"2026-11-28T01:02:03Z","actor":{"id":"user:1","object_type":"user","display_name":"Ada"},"verb":"create","object":{"id":"obj:1","object_type":"node","display_name":"web-1"},"target":{"id":"t:1","object_type":"thing","display_name":"x"},"data":{"k":1},"projects":["p1"]}`

type answer struct {
	Success bool   `json:"success"`
	EventID string `json:"event_id"`
	Error   string `json:"error"`
}

func produce(args []string) {
	fs := flag.NewFlagSet("produce", flag.ExitOnError)
	url := fs.String("url", nats.DefaultURL, "server")
	total := fs.Int("events", 10000, "events to publish")
	inflight := fs.Int("inflight", 200, "unanswered requests per connection, at most")
	conns := fs.Int("conns", 2, "connections")
	prefix := fs.String("prefix", "bench", "event_id prefix")
	ackedPath := fs.String("acked", "", "write acknowledged event_ids here")
	timeout := fs.Duration("timeout", 60*time.Second, "give up waiting for answers after this")
	fs.Parse(args)

	var acked, refused int64
	var ackedMu sync.Mutex
	var ackedIDs []string
	var wg sync.WaitGroup
	per := (*total + *conns - 1) / *conns
	start := time.Now()
	var firstErr atomic.Value
	for c := 0; c < *conns; c++ {
		from, to := c*per, (c+1)*per
		if to > *total {
			to = *total
		}
		wg.Add(1)
		go func(c, from, to int) {
			defer wg.Done()
			nc, err := nats.Connect(*url, nats.MaxReconnects(0))
			if err != nil {
				firstErr.Store(err.Error())
				return
			}
			defer nc.Close()
			slots := make(chan struct{}, *inflight)
			done := make(chan struct{})
			var answered int64
			want := int64(to - from)
			inbox := nats.NewInbox()
			_, err = nc.Subscribe(inbox+".*", func(m *nats.Msg) {
				var a answer
				if json.Unmarshal(m.Data, &a) == nil && a.Success {
					atomic.AddInt64(&acked, 1)
					if *ackedPath != "" {
						ackedMu.Lock()
						ackedIDs = append(ackedIDs, a.EventID)
						ackedMu.Unlock()
					}
				} else {
					if atomic.AddInt64(&refused, 1) == 1 {
						firstErr.Store(string(m.Data))
					}
				}
				<-slots
				if atomic.AddInt64(&answered, 1) == want {
					close(done)
				}
			})
			if err != nil || want == 0 {
				return
			}
			for i := from; i < to; i++ {
				slots <- struct{}{}
				id := fmt.Sprintf("%s-%d", *prefix, i)
				if err := nc.PublishRequest("event.event_feed", fmt.Sprintf("%s.%d", inbox, i), []byte(fmt.Sprintf(eventTemplate, id))); err != nil {
					firstErr.Store(err.Error())
					return
				}
			}
			nc.Flush()
			select {
			case <-done:
			case <-time.After(*timeout):
				firstErr.Store("timed out waiting for acknowledgements")
			}
		}(c, from, to)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if *ackedPath != "" {
		os.WriteFile(*ackedPath, []byte(strings.Join(ackedIDs, "\n")+"\n"), 0o644)
	}
	e, _ := firstErr.Load().(string)
	out, _ := json.Marshal(map[string]interface{}{"acked": acked, "refused": refused, "seconds": elapsed, "error": e})
	fmt.Println(string(out))
}
