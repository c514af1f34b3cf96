// natsbench: a NATS load generator used to compare servers side by side,
// through the official Go client.  Our copy of ../shared/natsbench, with the
// flags bench/run.py needs for traffic as users send it:
//
//	-subjects K   publishers spread their messages over K subjects
//	              (<base>.<i>.data, each publisher from its own offset)
//	-sub S        what each subscriber subscribes to: exact (one subscription
//	              per subject), pwc (<base>.*.data) or fwc (<base>.>)
//	-mode pubonly no subscriber: how fast the server takes PUBs
//	-rate R       messages per second per publisher (0: as fast as it can):
//	              a fleet of slow publishers, each read carrying one PUB
//	-queue Q      subscribers join queue group Q: each message is delivered
//	              once, to one of them
//	-mode connect -np clients each connect (TLS and CONNECT included), flush
//	              (PING/PONG) and close, -n times: connections a second
//	-mode reqrep  -np requesters, each on its own connection (its own inbox),
//	              each with one request in flight, over -subjects subjects,
//	              answered by -ns responders (a queue group when more than
//	              one): request rate and latency percentiles
//
// It prints one line of figures per run.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func opts(token, ca, cert, key string) []nats.Option {
	o := []nats.Option{nats.Timeout(10 * time.Second), nats.NoReconnect()}
	if token != "" {
		o = append(o, nats.Token(token))
	}
	if ca != "" {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(ca)
		if err != nil {
			panic(err)
		}
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if cert != "" {
			c, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				panic(err)
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		o = append(o, nats.Secure(cfg))
	}
	return o
}

func main() {
	url := flag.String("url", "nats://127.0.0.1:4222", "server url")
	purl := flag.String("puburl", "", "publish url (default: url)")
	mode := flag.String("mode", "pubsub", "pubsub | pubonly | latency | reqrep | connect")
	queue := flag.String("queue", "", "queue group the subscribers join (each message delivered once)")
	np := flag.Int("np", 1, "publishers")
	ns := flag.Int("ns", 1, "subscribers")
	n := flag.Int("n", 200000, "messages per publisher")
	size := flag.Int("ms", 16, "payload bytes")
	nsubj := flag.Int("subjects", 1, "subjects the publishers spread their messages over")
	subKind := flag.String("sub", "exact", "exact | pwc | fwc: what subscribers subscribe to")
	rate := flag.Float64("rate", 0, "messages per second per publisher (0: unthrottled)")
	token := flag.String("token", "", "auth token")
	ptoken := flag.String("pubtoken", "", "auth token for publishers (default: token)")
	ca := flag.String("ca", "", "root CA (enables TLS)")
	cert := flag.String("cert", "", "client cert")
	key := flag.String("key", "", "client key")
	pca := flag.String("pubca", "", "root CA for publishers (default: ca)")
	pcert := flag.String("pubcert", "", "client cert for publishers")
	pkey := flag.String("pubkey", "", "client key for publishers")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after")
	flag.Parse()
	if *purl == "" {
		*purl = *url
		if *ptoken == "" {
			*ptoken = *token
		}
		if *pca == "" {
			*pca, *pcert, *pkey = *ca, *cert, *key
		}
	}
	subOpts := opts(*token, *ca, *cert, *key)
	pubOpts := opts(*ptoken, *pca, *pcert, *pkey)
	base := fmt.Sprintf("bench.%d", time.Now().UnixNano())
	subjects := make([]string, *nsubj)
	for i := range subjects {
		subjects[i] = fmt.Sprintf("%s.%d.data", base, i)
	}
	if *nsubj == 1 {
		subjects[0] = base
	}
	payload := make([]byte, *size)

	if *mode == "latency" {
		rc, err := nats.Connect(*url, subOpts...)
		if err != nil {
			panic(err)
		}
		rc.Subscribe(subjects[0], func(m *nats.Msg) { m.Respond(m.Data) })
		rc.Flush()
		c, err := nats.Connect(*purl, pubOpts...)
		if err != nil {
			panic(err)
		}
		lat := make([]time.Duration, 0, *n)
		start := time.Now()
		for i := 0; i < *n; i++ {
			t := time.Now()
			if _, err := c.Request(subjects[0], payload, 5*time.Second); err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			lat = append(lat, time.Since(t))
		}
		el := time.Since(start)
		sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
		fmt.Printf("latency n=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f rps=%.0f\n", *n, q(0.5), q(0.9), q(0.99), q(1), float64(*n)/el.Seconds())
		return
	}

	if *mode == "connect" {
		var wg sync.WaitGroup
		var failed int64
		start := time.Now()
		for i := 0; i < *np; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < *n; j++ {
					c, err := nats.Connect(*purl, pubOpts...)
					if err == nil {
						err = c.Flush()
						c.Close()
					}
					if err != nil && atomic.AddInt64(&failed, 1) == 1 {
						fmt.Println("first failure:", err)
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		if failed > 0 {
			fmt.Println("error: connections failed:", failed)
			os.Exit(1)
		}
		fmt.Printf("connect np=%d n=%d conn_rate=%.0f elapsed_s=%.3f\n", *np, *np**n, float64(*np**n)/el.Seconds(), el.Seconds())
		return
	}
	if *mode == "reqrep" {
		reqrep(*url, *purl, subOpts, pubOpts, base, subjects, payload, *np, *ns, *n)
		return
	}

	total := int64(*n * *np)
	if *mode == "pubonly" {
		*ns = 0
	}
	var got int64
	var wg sync.WaitGroup
	done := make(chan struct{}, *ns)
	for i := 0; i < *ns; i++ {
		c, err := nats.Connect(*url, subOpts...)
		if err != nil {
			panic(err)
		}
		var cnt int64
		handler := func(m *nats.Msg) {
			cnt++
			if atomic.AddInt64(&got, 1) == total && *queue != "" {
				done <- struct{}{}
			}
			if cnt == total && *queue == "" {
				done <- struct{}{}
			}
		}
		var patterns []string
		switch {
		case *nsubj == 1:
			patterns = []string{subjects[0]}
		case *subKind == "pwc":
			patterns = []string{base + ".*.data"}
		case *subKind == "fwc":
			patterns = []string{base + ".>"}
		default:
			patterns = subjects
		}
		for _, p := range patterns {
			var s *nats.Subscription
			if *queue != "" {
				s, err = c.QueueSubscribe(p, *queue, handler)
			} else {
				s, err = c.Subscribe(p, handler)
			}
			if err != nil {
				panic(err)
			}
			s.SetPendingLimits(-1, -1)
		}
		c.Flush()
	}
	// let interest propagate across routes/gateways
	time.Sleep(300 * time.Millisecond)
	pubs := make([]*nats.Conn, *np)
	for i := 0; i < *np; i++ {
		c, err := nats.Connect(*purl, pubOpts...)
		if err != nil {
			panic(err)
		}
		pubs[i] = c
	}
	start := time.Now()
	for i := 0; i < *np; i++ {
		wg.Add(1)
		go func(k int, c *nats.Conn) {
			defer wg.Done()
			var tick *time.Ticker
			if *rate > 0 {
				// Spread the fleet's first messages over one period.
				time.Sleep(time.Duration(float64(time.Second) / *rate * float64(k) / float64(*np)))
				tick = time.NewTicker(time.Duration(float64(time.Second) / *rate))
				defer tick.Stop()
			}
			j0 := k * *nsubj / *np
			for j := 0; j < *n; j++ {
				if tick != nil {
					<-tick.C
				}
				c.Publish(subjects[(j0+j)%*nsubj], payload)
			}
			c.Flush()
		}(i, pubs[i])
	}
	wg.Wait()
	pubEl := time.Since(start)
	deadline := time.After(*timeout)
	waitFor := *ns
	delivered := total * int64(*ns)
	if *queue != "" && *ns > 0 {
		waitFor, delivered = 1, total
	}
	for i := 0; i < waitFor; i++ {
		select {
		case <-done:
		case <-deadline:
			fmt.Printf("TIMEOUT received=%d of %d\n", atomic.LoadInt64(&got), delivered)
			os.Exit(2)
		}
	}
	el := time.Since(start)
	fmt.Printf("%s np=%d ns=%d size=%d subjects=%d published=%d delivered=%d pub_rate=%.0f deliver_rate=%.0f elapsed_s=%.3f\n",
		*mode, *np, *ns, *size, *nsubj, total, delivered, float64(total)/pubEl.Seconds(), float64(delivered)/el.Seconds(), el.Seconds())
}

// reqrep: np requesters with one request in flight each, ns responders.
func reqrep(url, purl string, subOpts, pubOpts []nats.Option, base string, subjects []string, payload []byte, np, ns, n int) {
	pattern := subjects[0]
	if len(subjects) > 1 {
		pattern = base + ".*.data"
	}
	for i := 0; i < ns; i++ {
		rc, err := nats.Connect(url, subOpts...)
		if err != nil {
			panic(err)
		}
		handler := func(m *nats.Msg) { m.Respond(m.Data) }
		if ns > 1 {
			_, err = rc.QueueSubscribe(pattern, "responders", handler)
		} else {
			_, err = rc.Subscribe(pattern, handler)
		}
		if err != nil {
			panic(err)
		}
		rc.Flush()
	}
	time.Sleep(300 * time.Millisecond)
	conns := make([]*nats.Conn, np)
	for i := range conns {
		c, err := nats.Connect(purl, pubOpts...)
		if err != nil {
			panic(err)
		}
		// One request first: the connection's inbox subscription is made.
		if _, err := c.Request(subjects[i%len(subjects)], payload, 5*time.Second); err != nil {
			panic(err)
		}
		conns[i] = c
	}
	lats := make([][]time.Duration, np)
	var wg sync.WaitGroup
	var failed int64
	start := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func(k int, c *nats.Conn) {
			defer wg.Done()
			lat := make([]time.Duration, 0, n)
			for j := 0; j < n; j++ {
				t := time.Now()
				if _, err := c.Request(subjects[(k+j*np)%len(subjects)], payload, 5*time.Second); err != nil {
					atomic.AddInt64(&failed, 1)
					return
				}
				lat = append(lat, time.Since(t))
			}
			lats[k] = lat
		}(i, c)
	}
	wg.Wait()
	el := time.Since(start)
	if failed > 0 {
		fmt.Println("error: requests failed:", failed)
		os.Exit(1)
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	fmt.Printf("reqrep np=%d ns=%d subjects=%d n=%d rps=%.0f p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f\n",
		np, ns, len(subjects), len(all), float64(len(all))/el.Seconds(), q(0.5), q(0.9), q(0.99), q(1))
}
