
maineducation.*"(