import BlockCert.RatOrder
import BlockCert.Bound
import BlockCert.Composition
import BlockCert.Check
