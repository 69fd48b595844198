
å
$d778c084-fdf5-4e34-9f75-dad32053e324

9434765919"´§¬×*YFirst Team Around the Child meeting arranged with school, health and the early help team.‚I
ØÐö×school-bnhs-trust-ala-social-care-cMeadow Road Family Hub