// Generates an operator, an account and a user (FAKE, for tests): op.jwt, acc.jwt, acc.pub, user.creds,
// which eventsvc/test/leafcreds.py holds. Build with Debian's Go packages:
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o gen . && ./gen
package main

import (
	"fmt"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "test-operator"
	ojwt, err := oc.Encode(okp)
	must(err)
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "EDGE"
	ajwt, err := ac.Encode(okp)
	must(err)
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = "leaf"
	ujwt, err := uc.Encode(akp)
	must(err)
	useed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	must(err)
	must(os.WriteFile("op.jwt", []byte(ojwt), 0644))
	must(os.WriteFile("acc.jwt", []byte(ajwt), 0644))
	must(os.WriteFile("acc.pub", []byte(apub), 0644))
	must(os.WriteFile("user.creds", creds, 0600))
	fmt.Println("ok", opub, apub, upub)
}
