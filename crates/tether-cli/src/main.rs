//! tether\nfn main(){}
